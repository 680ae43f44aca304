"""Against the machine's real libvirtd + QEMU (TCG) with the lab's tick guest."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.commands import Dispatcher
from agent.fencing import FenceAgents
from agent.hypervisor import LibvirtHypervisor
from agent.runner import SubprocessRunner
from agent.storage import LinuxStorage

from .conftest import REPO, EventLog, Harness, unique

pytestmark = pytest.mark.libvirtd
URI = "qemu:///system"


def qemu_pid(guest: str) -> int:
    """The root-namespace pid of a guest's QEMU (libvirtd may run in its own PID namespace)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"guest={guest},".encode() in b" ".join(cmdline) + b",":
                return int(entry.name)
    raise AssertionError(f"no qemu process for {guest}")


@pytest.fixture(scope="module")
def tick_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lab")
    subprocess.run(
        [str(REPO / "deploy/lab/guest/build"), str(out)], check=True, capture_output=True
    )
    return out / "tick.elf"


@pytest.fixture
def real(events: EventLog, tmp_path: Path) -> Iterator[Harness]:
    answered = subprocess.run(
        ["virsh", "-c", URI, "version"], capture_output=True, check=False, timeout=10
    )
    if answered.returncode != 0:
        pytest.skip(f"{URI} does not answer (run deploy/lab/start-libvirtd): {answered.stderr!r}")
    hv = LibvirtHypervisor(URI, events)
    runner = SubprocessRunner()
    h = Harness(Dispatcher("real", hv, LinuxStorage(runner), FenceAgents(runner)))
    yield h
    for g in hv.list_guests():
        if g.name.startswith("haventest-"):
            h.run("destroy", guest=g.name)
            h.run("undefine", guest=g.name)
    hv.close()


def tick_xml(name: str, kernel: Path, log: Path) -> str:
    script = REPO / "deploy/lab/guest/domain-xml"
    args = [str(script), name, "--kernel", str(kernel), "--serial-log", str(log)]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def test_define_start_crash_destroy(
    real: Harness, events: EventLog, tick_elf: Path, tmp_path: Path
) -> None:
    name = unique("haventest")
    serial = tmp_path / "serial.log"
    assert real.run("define", xml=tick_xml(name, tick_elf, serial)).ok
    started = time.monotonic()
    result = real.run("start", guest=name)
    assert result.ok, result.error
    assert time.monotonic() - started < 5
    events.wait_for(lambda e: e.guest == name and e.state == "started")
    facts = real.run("host_facts").data
    assert facts["host_uuid"] and facts["hypervisor"] == "QEMU"
    assert real.run("list_guests", active_only=True).data["guests"][0]["state"] == "running"
    deadline = time.monotonic() + 5
    while (
        "tick 1" not in (serial.read_text() if serial.exists() else "")
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert "tick 1" in serial.read_text()  # the guest really runs

    killed = time.monotonic()
    os.kill(qemu_pid(name), signal.SIGKILL)
    crash = events.wait_for(lambda e: e.guest == name and e.state == "crashed", timeout_s=1.0)
    assert crash.detail == "failed"
    assert time.monotonic() - killed < 1.0

    assert real.run("start", guest=name).ok
    destroyed = real.run("destroy", guest=name)
    assert destroyed.ok and destroyed.data["changed"] and destroyed.data["state"] == "shutoff"
    events.wait_for(lambda e: e.guest == name and e.detail == "destroyed")
    assert real.run("undefine", guest=name).data["changed"]


def test_shutdown_times_out_then_destroys(real: Harness, tick_elf: Path, tmp_path: Path) -> None:
    name = unique("haventest")
    real.run("define", xml=tick_xml(name, tick_elf, tmp_path / "s.log"))
    assert real.run("start", guest=name).ok
    result = real.run("shutdown", guest=name, timeout_s=0.5)  # tick has no ACPI: never obeys
    assert result.ok, result.error
    assert result.data["how"] == "destroyed" and result.data["state"] == "shutoff"
