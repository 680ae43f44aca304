"""One real lab (three hosts in namespaces) per test module, torn down afterwards."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

LAB_DIR = Path(__file__).resolve().parents[2] / "deploy" / "lab"
sys.path.insert(0, str(LAB_DIR))

import haven_lab  # noqa: E402

HOSTS = ("et-virt05", "et-virt06", "et-virt07")
# A fixed place (not a pytest tmp dir) so the next run cleans up after an interrupted one.
TEST_ROOT = LAB_DIR.parents[1] / "var" / "lab-test"


class BuiltLab:
    """The lab under test plus what its creation cost."""

    def __init__(self, lab: haven_lab.Lab, seconds: float) -> None:
        self.lab = lab
        self.create_seconds = seconds


@pytest.fixture(scope="module")
def built_lab() -> Iterator[BuiltLab]:
    reason = haven_lab.namespace_support()
    if reason is not None:
        pytest.skip(f"lab hosts need network namespaces: {reason}")
    lab = haven_lab.Lab(TEST_ROOT)
    try:
        lab.destroy()  # what an interrupted earlier run left behind
        started = time.monotonic()
        lab.create(HOSTS)
    except haven_lab.LabError as exc:
        lab.destroy()
        pytest.fail(f"lab could not be created: {exc}")
    yield BuiltLab(lab, time.monotonic() - started)
    lab.destroy()


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """Declare pytest-django's ini key: with `-p no:django` it would be unknown, and the
    project's warnings-as-errors would stop the run before a single lab test. With the plugin
    loaded, declaring it again would hide the settings from pytest-django (and the tests would
    then use the real database instead of the test one)."""
    if not pluginmanager.has_plugin("django"):
        parser.addini("DJANGO_SETTINGS_MODULE", "Django settings module (pytest-django)")
