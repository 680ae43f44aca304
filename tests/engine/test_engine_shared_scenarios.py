"""Every scenario of the shared contract (../shared/scenarios) and of the project passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from console.engine.sim import failures, load, simulate
from tests.scenario_files import scenario_params, shared_folder_or_skip


@pytest.mark.parametrize("path", scenario_params())
def test_scenario(path: Path) -> None:
    sc = load(path)
    assert failures(sc, simulate(sc)) == []


def test_shared_folder_present_or_skipped() -> None:
    shared_folder_or_skip("on the engine")
