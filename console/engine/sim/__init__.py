"""The HA simulator: scenarios (../shared/scenarios/FORMAT.md) run against the real engine.

    python -m console.engine.sim SCENARIO.json [--human]

Use from Python: `load(path)` or `parse(dict)` gives a Scenario, `simulate(scenario)` a Run,
`failures(scenario, run)` what did not hold.
"""

from __future__ import annotations

import json
from pathlib import Path

from console.engine.sim.check import failures, final_state, matches
from console.engine.sim.scenario import Scenario, ScenarioError, SimSettings, parse
from console.engine.sim.world import Run, simulate


def load(path: str | Path) -> Scenario:
    """Read and check a scenario file; ScenarioError names the bad field."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ScenarioError("(file)", f"not valid JSON: {e}") from e
    return parse(raw)


__all__ = [
    "Run",
    "Scenario",
    "ScenarioError",
    "SimSettings",
    "failures",
    "final_state",
    "load",
    "matches",
    "parse",
    "simulate",
]
