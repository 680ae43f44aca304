"""A simulated fleet through the real console: 32 hosts x 10 guests for a short while.

deploy/bench/fleet.py runs it (its own Redis and SQLite database, the console's processes as
deploy/quickstart starts them, `FleetAgents` playing every host's agent through Redis): guest
crashes every 2 s, the drainer frozen for 4 s halfway (the console falls behind on its
heartbeats), then one host lost with its guests; meanwhile the web process serves every page,
loaded in a loop over HTTP (``--pages``). Whatever the timings on this machine (the
benchmark prints them; targets belong there): no healthy host may be declared unreachable or
fenced, the lag must raise an alarm, every crashed guest must be started again, every guest
of the lost host started elsewhere after its fence (the run fails otherwise), and every page
must have answered 200 each time it was loaded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_a_fleet_of_32_hosts_fences_no_healthy_host_and_restarts_every_crash() -> None:
    argv = [sys.executable, str(ROOT / "deploy/bench/fleet.py"), "--one", "32x10"]
    argv += ["--seconds", "16", "--crash-every", "2", "--stall", "4", "--pages"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["healthy_fenced"] == []
    assert out["healthy_unreachable"] == []
    assert any("behind" in a for a in out["alarms"]), out["alarms"]
    assert out["crashes"] >= 4
    assert out["crashes_without_start"] == 0
    assert out["crashes_not_running"] == 0
    assert out["lost_guests"] == 10  # and each started elsewhere, or the run had failed
    assert out["heartbeats"] > 0 and out["ticks"] > 0
    assert out["pages"], "no page was loaded"
    for label, page in out["pages"].items():
        assert page["n"] >= 1 and page["errors"] == [], (label, page)
    assert out["cpu_pct"]["web"] > 0 and out["rss_mib"]["web"] > 0
