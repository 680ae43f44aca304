"""Every scenario of the shared contract (../shared/scenarios) and of the project passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from console.engine.sim import failures, load, simulate

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "scenarios"
OWN = Path(__file__).resolve().parent / "scenarios"


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


@pytest.mark.parametrize("path", _files(SHARED), ids=lambda p: p.stem)
def test_shared_scenario(path: Path) -> None:
    sc = load(path)
    assert failures(sc, simulate(sc)) == []


def test_shared_folder_present_or_skipped() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the shared scenarios are not checked here")
    assert _files(SHARED), f"{SHARED} holds no scenario"


@pytest.mark.parametrize("path", _files(OWN), ids=lambda p: p.stem)
def test_project_scenario(path: Path) -> None:
    sc = load(path)
    assert failures(sc, simulate(sc)) == []
