"""The agent's opt-in chaos trace (HAVEN_AGENT_TRACE, agent/hypervisor.py) on test:///default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agent.hypervisor import TRACE_ENV, LibvirtHypervisor

REPO = Path(__file__).resolve().parents[2]


def _xml(name: str) -> str:
    return (
        f"<domain type='test'><name>{name}</name><memory unit='KiB'>1024</memory>"
        "<vcpu>1</vcpu><os><type>hvm</type></os></domain>"
    )


def test_off_without_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRACE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    hv = LibvirtHypervisor("test:///default", lambda _e: None)
    name = f"t{uuid.uuid4().hex[:6]}"
    hv.define(_xml(name))
    hv.start(name)
    hv.destroy(name)
    hv.close()
    assert list(tmp_path.iterdir()) == []


#: run in a process of its own: libvirt's event loop is one per process, and after the hundred
#: test files before it in one pytest process it once delivered no test:/// events at all
#: (thread alive; not reproduced in a smaller run). The agent runs one hypervisor per process.
_PLAY = """
import json, sys, time, uuid
from agent.hypervisor import LibvirtHypervisor
path, xml_of = sys.argv[1], lambda n: (
    f"<domain type='test'><name>{n}</name><memory unit='KiB'>1024</memory>"
    "<vcpu>1</vcpu><os><type>hvm</type></os></domain>")
hv = LibvirtHypervisor("test:///default", lambda _e: None)
name = f"t{uuid.uuid4().hex[:6]}"
hv.define(xml_of(name))
hv.start(name)
hv.start(name)  # already running: no second start
hv.shutdown(name, 5)
hv.start(name)
hv.destroy(name)
hv.destroy(name)  # already off: nothing
deadline = time.monotonic() + 30  # a loaded machine delays libvirt's event thread
while time.monotonic() < deadline:
    text = open(path).read()
    if text.count('"lifecycle"') >= 5 and '"stopped"' in text:
        break
    time.sleep(0.05)  # lifecycle events arrive on libvirt's event thread
hv.close()
print(json.dumps({"name": name}))
"""


def test_every_start_and_stop_is_traced_with_time_and_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "trace.jsonl"
    before = time.time()
    env = {**os.environ, TRACE_ENV: str(path)}
    played = subprocess.run(
        [sys.executable, "-c", _PLAY, str(path)],
        capture_output=True, text=True, env=env, timeout=120, check=True, cwd=REPO,
    )  # fmt: skip
    name = json.loads(played.stdout.strip().splitlines()[-1])["name"]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    pids = {r["pid"] for r in records}
    assert len(pids) == 1 and os.getpid() not in pids  # the player's own pid, on every record
    assert all(r["t"] >= before - 1 for r in records)
    assert records[0]["event"] == "connect" and "test" in records[0]["guests"]
    mine = [r["event"] for r in records if r["guest"] == name and r["event"] != "lifecycle"]
    assert mine == ["start", "shutdown", "start", "destroy"]
    states = [r["state"] for r in records if r["guest"] == name and r["event"] == "lifecycle"]
    assert {"started", "stopped"} <= set(states), played.stderr[-2000:]
