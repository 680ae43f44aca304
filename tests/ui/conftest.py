"""Browser tests: Debian's chromium driven by Playwright (never a downloaded browser), a live
Django server, and simulated agents (console/ha/fakes.py) behind the real HA runner.

Screenshots of every page go to var/screenshots/ (git-ignored).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "screenshots"
PASSWORD = "ui-test-password"

# Playwright's sync API runs an event loop in this thread; the ORM calls the tests make
# between browser steps are ordinary blocking calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(autouse=True)
def ui_settings(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.HAVEN_WAKE_ON_COMMAND = False  # the simulated agents run the runner themselves


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    pg = context.new_page()
    yield pg
    context.close()


@pytest.fixture
def shot() -> Any:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page: Any, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture
def store() -> Iterator[Any]:
    from tests.stores import redis_store

    with redis_store("ui") as s:
        yield s


@pytest.fixture
def sim(store: Any) -> Iterator[Any]:
    from console.ha import rules, tasks
    from console.ha.fakes import FakeAgents
    from console.jobs.transport import use_transport

    # small hosts; a live migration takes long enough to be seen
    agents = FakeAgents(store, memory_total_mib=4096, cpus=2)
    agents.delays["migrate"] = 5.0
    # the pages (the rulebook's live view, the push stream) read the store the agents write
    previous, tasks._store = tasks._store, store
    try:
        with use_transport(agents), rules.use(store):
            agents.start()
            yield agents
            agents.stop()
    finally:
        tasks._store = previous
    assert not agents.errors, agents.errors[0]


def make_user(name: str, role: str) -> None:
    from django.contrib.auth.models import Group, User

    user = User.objects.create_user(name, password=PASSWORD)
    user.groups.add(Group.objects.get_or_create(name=role)[0])  # a flush may have removed it


def log_in(page: Any, base: str, name: str) -> None:
    page.goto(f"{base}/login/")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
