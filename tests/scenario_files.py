"""The scenario files every scenario suite plays: the shared contract's (``../shared/scenarios``,
absent in a user's clone: skipped then) and the project's own (tests/engine/scenarios)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "scenarios"
OWN = ROOT / "tests" / "engine" / "scenarios"


def scenario_params(
    cannot: dict[str, str] | None = None, own_only: tuple[str, ...] = ()
) -> list[object]:
    """Every scenario file, shared first, as test params (ids: ``shared/NAME``, ``own/NAME``);
    ``cannot``: name -> why a suite cannot play it (a strict xfail: one that starts passing
    fails, so the list stays true); ``own_only``: of the project's own, only those whose name
    starts so (and those in ``cannot``), unless ``HAVEN_ALL_SCENARIOS=1``."""
    cannot = cannot or {}
    if os.environ.get("HAVEN_ALL_SCENARIOS") == "1":
        own_only = ()
    params: list[object] = []
    for label, folder in (("shared", SHARED), ("own", OWN)):
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            left_out = own_only and not path.stem.startswith(own_only)
            if label == "own" and left_out and path.stem not in cannot:
                continue
            why = cannot.get(path.stem)
            marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
            params.append(pytest.param(path, id=f"{label}/{path.stem}", marks=marks))
    return params


def shared_folder_or_skip(suite: str) -> None:
    """Skip (saying so) where the shared folder is absent; where present it holds scenarios."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the shared scenarios are not played {suite}")
    assert list(SHARED.glob("*.json")), f"{SHARED} holds no scenario"
