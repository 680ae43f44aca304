"""Every scenario file, run through the whole runtime: ingest → runner → jobs → simulated agents,
on SQLite, with the in-memory store and virtual time (tests/console/runtime_world.py), checked
by the same expectations and safety invariants as on the pure engine
(tests/engine/test_engine_shared_scenarios.py).

`deploy/test` plays the shared scenarios and the project's runtime-only ones (``lost-*``: a
command's result lost; ``console-*``: the console restarting or lagging) this way; the pure
engine plays all of them there (tests/engine). `deploy/test-scenarios`
(``HAVEN_ALL_SCENARIOS=1``) plays every project scenario through the runtime too: ~3 s each,
~5 min in all, kept out of `deploy/test` for CI's 25 minutes."""

from __future__ import annotations

from pathlib import Path

import pytest

from console.engine.sim import failures, load
from tests.console.runtime_world import simulate_runtime
from tests.scenario_files import scenario_params, shared_folder_or_skip

#: scenarios the console cannot play as the simulator does, and why (strict: one that starts
#: passing fails here, so this list stays true)
CANNOT: dict[str, str] = {}


#: the project scenarios `deploy/test` plays through the runtime (all: HAVEN_ALL_SCENARIOS=1):
#: lost results, the console's own parts failing, and which hosts are in the shared storage
RUNTIME_ONLY = ("lost-", "console-", "shared-storage-")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", scenario_params(CANNOT, RUNTIME_ONLY))
def test_scenario_through_the_runtime(path: Path) -> None:
    sc = load(path)
    assert failures(sc, simulate_runtime(sc)) == []


def test_shared_folder_present_or_skipped() -> None:
    shared_folder_or_skip("through the runtime")
