"""The browser fixtures of the UI tests (Debian's chromium through Playwright), for the storage
lab's screenshots; only these three (the UI tests' autouse settings do not apply here)."""

from tests.ui.conftest import browser, page, shot  # noqa: F401
