"""The agent's opt-in chaos trace (HAVEN_AGENT_TRACE, agent/hypervisor.py) on test:///default."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from agent.hypervisor import TRACE_ENV, LibvirtHypervisor


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


def test_every_start_and_stop_is_traced_with_time_and_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "trace.jsonl"
    monkeypatch.setenv(TRACE_ENV, str(path))
    hv = LibvirtHypervisor("test:///default", lambda _e: None)
    name = f"t{uuid.uuid4().hex[:6]}"
    before = time.time()
    hv.define(_xml(name))
    hv.start(name)
    hv.start(name)  # already running: no second start
    hv.shutdown(name, 5)
    hv.start(name)
    hv.destroy(name)
    hv.destroy(name)  # already off: nothing
    deadline = time.monotonic() + 30  # a loaded machine delays libvirt's event thread
    while time.monotonic() < deadline and not (
        path.read_text().count('"lifecycle"') >= 5 and '"stopped"' in path.read_text()
    ):
        time.sleep(0.05)  # lifecycle events arrive on libvirt's event thread
    hv.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(r["pid"] == os.getpid() and r["t"] >= before - 1 for r in records)
    assert records[0]["event"] == "connect" and "test" in records[0]["guests"]
    mine = [r["event"] for r in records if r["guest"] == name and r["event"] != "lifecycle"]
    assert mine == ["start", "shutdown", "start", "destroy"]
    states = [r["state"] for r in records if r["guest"] == name and r["event"] == "lifecycle"]
    threads = [t.name for t in threading.enumerate()]
    assert {"started", "stopped"} <= set(states), f"no lifecycle events; threads: {threads}"
