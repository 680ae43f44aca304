"""What the bootstrap installs for clean shutdowns: the hook script and, on systemd hosts, the
drain unit (checked by ``systemd-analyze verify``), ordered to stop before libvirt's guests."""

from __future__ import annotations

import itertools
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
    # ... and before the guests' machine scopes (ordered before virt-guest-shutdown.target,
    # which only this unit starts when libvirt-guests is not enabled) and the cluster stack
    assert {"libvirtd.service", "libvirt-guests.service", "haven-agent-et-virt05.service",
            "virt-guest-shutdown.target", "dlm.service", "lvmlockd.service", "corosync.service",
            "haven-cluster-join.service"} <= set(after.removeprefix("After=").split())  # fmt: skip
    wants = next(line for line in text.splitlines() if line.startswith("Wants="))
    assert "virt-guest-shutdown.target" in wants.split("=", 1)[1].split()
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


def _after(unit_text: str) -> set[str]:
    return {
        name
        for line in unit_text.splitlines()
        if line.startswith("After=")
        for name in line.removeprefix("After=").split()
    }


def test_a_clean_shutdown_stops_the_drain_then_the_gfs2_then_the_lockspaces_then_dlm(
    tmp_path: Path,
) -> None:
    """The units a shared-storage host gets, in the order systemd stops them at a poweroff
    (the reverse of their After= order): the drain first (the guests leave while their disks
    on GFS2 are there), then the GFS2 mount, its LV's activation unit (deactivate, leave the
    VG's lockspace), the join unit (every lockspace left), and only then dlm and lvmlockd: a
    dlm stopped with a lockspace active is killed 90 s later and its peers fence the host for
    ever (the storage lab, 2026-12-04)."""
    from agent.protocol import FstabEntryArgs
    from agent.runner import SubprocessRunner
    from agent.storage import LinuxStorage
    from console.bootstrap import cluster_stack

    storage = LinuxStorage(
        SubprocessRunner(), fstab=tmp_path / "fstab", drain_unit="haven-drain-sv1.service"
    )
    entry = storage.fstab_entry(
        FstabEntryArgs(
            device="/dev/vg_shared/guest_roots",
            mount_point="/guest_roots",
            fstype="gfs2",
            options="noatime,_netdev,nofail",
            activate_shared=True,
        )
    )
    options = dict(
        o.split("=", 1) for o in entry["line"].split("\t")[3].split(",") if o.startswith("x-")
    )
    activation = entry["unit"]
    mount = "guest_roots.mount"
    after = {
        "haven-drain-sv1.service": _after(bootstrap.drain_unit("sv1")),
        mount: {options["x-systemd.requires"]},  # what systemd-fstab-generator makes of it
        activation: _after((tmp_path / "systemd/system" / activation).read_text()),
        cluster_stack.JOIN_UNIT_NAME: _after(cluster_stack.JOIN_UNIT),
    }
    after[options["x-systemd.before"]].add(mount)  # Before= on the mount is After= on the drain

    def stops_before(first: str, then: str) -> bool:
        seen, todo = set(), [first]
        while todo:
            unit = todo.pop()
            for nxt in after.get(unit, set()) - seen:
                if nxt == then:
                    return True
                seen.add(nxt)
                todo.append(nxt)
        return False

    order = ["haven-drain-sv1.service", mount, activation, cluster_stack.JOIN_UNIT_NAME]
    for first, then in itertools.pairwise(order):
        assert stops_before(first, then), f"{first} must stop before {then}"
    for daemon in ("lvmlockd.service", "dlm.service", "corosync.service"):
        assert stops_before(cluster_stack.JOIN_UNIT_NAME, daemon)
    assert not stops_before(mount, "haven-drain-sv1.service")  # no cycle
    activation_text = (tmp_path / "systemd/system" / activation).read_text()
    assert "ExecStop=-/sbin/vgchange --lock-stop vg_shared" in activation_text
    assert "ExecStop=-/sbin/lvmlockctl --stop-lockspaces" in cluster_stack.JOIN_UNIT
