"""What the bootstrap installs for clean shutdowns: the hook script and, on systemd hosts, the
drain unit (checked by ``systemd-analyze verify``), ordered to stop before libvirt's guests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from console.bootstrap import ssh as bootstrap


def test_the_drain_unit_verifies_and_stops_before_libvirt(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (systemd)")
    hook = tmp_path / "shutdown-et-virt05.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o700)
    unit = tmp_path / "haven-drain-et-virt05.service"
    unit.write_text(bootstrap.drain_unit("et-virt05", str(hook)))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    text = unit.read_text()
    # stop order is the reverse of start order: After= libvirt means it stops before them
    after = next(line for line in text.splitlines() if line.startswith("After="))
    assert {"libvirtd.service", "libvirt-guests.service", "haven-agent-et-virt05.service"} <= set(
        after.removeprefix("After=").split()
    )
    assert f"ExecStop={hook}" in text and "TimeoutStopSec=330" in text
    unit.write_text(bootstrap.drain_unit("et-virt05", "not/absolute.sh"))
    bad = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, check=False
    )
    assert bad.returncode != 0  # the check is real


def test_the_hook_runs_the_agents_drain_with_its_own_broker_file(settings: object) -> None:
    script = bootstrap._shutdown_hook("et-virt05", "/opt/haven-agent/1.0")
    assert script.startswith("#!/bin/sh\n")
    assert (
        "exec /opt/haven-agent/1.0/bin/python -m agent.shutdown --broker-file "
        "/etc/haven/agent-et-virt05.env --host et-virt05 --libvirt-uri qemu:///system "
        "--timeout 300 >>/var/log/haven-agent-et-virt05.log 2>&1"
    ) in script
