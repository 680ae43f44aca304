"""Real LVM on loop devices (metadata only, private config) and real mkfs.gfs2."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.runner import SubprocessRunner
from agent.storage import LinuxStorage, parse_lvm_report

from .conftest import Harness, unique

MiB = 1024 * 1024


def test_lvm_pvcreate_vgcreate_lvcreate_lvextend_probe(
    harness: Harness, lvm_env: Path, loop_device: Callable[[int], str]
) -> None:
    dev = loop_device(200)
    vg, lv = unique("havenvg"), "data"
    assert harness.run("pvcreate", device=dev).ok
    refused = harness.run("vgcreate", vg=vg, devices=[dev])
    assert refused.error is not None
    assert refused.error.code == "clustered_locking_unavailable"
    assert "clustered locking unavailable" in refused.error.message
    bad = harness.run("vgcreate", vg=vg, devices=[dev], local=True, extent_size_bytes=3000)
    assert bad.error is not None and bad.error.code == "bad_request"
    made = harness.run("vgcreate", vg=vg, devices=[dev], local=True, extent_size_bytes=8 * MiB)
    assert made.ok, made.error
    assert made.data == {"vg": vg, "shared": False, "extent_size_bytes": 8 * MiB}
    created = harness.run("lvcreate", vg=vg, lv=lv, size_bytes=8 * MiB)
    assert created.ok, created.error
    assert created.data["size_bytes"] == 8 * MiB
    grown = harness.run("lvextend", vg=vg, lv=lv, size_bytes=16 * MiB)
    assert grown.ok and grown.data["size_bytes"] == 16 * MiB
    probe = harness.run("storage_probe")
    assert probe.ok, probe.error
    pvs = {p["pv_name"]: p for p in probe.data["pvs"]}
    assert pvs[dev]["vg_name"] == vg
    vgs = {v["vg_name"]: v for v in probe.data["vgs"]}
    assert isinstance(vgs[vg]["vg_size"], int) and vgs[vg]["lv_count"] == 1
    lvs = {(x["vg_name"], x["lv_name"]): x for x in probe.data["lvs"]}
    assert lvs[(vg, lv)]["lv_size"] == 16 * MiB
    assert probe.data["blockdevices"]
    assert harness.run("lvremove", vg=vg, lv=lv).ok
    again = harness.run("lvremove", vg=vg, lv=lv)
    assert again.error is not None and again.error.code == "command_failed"
    assert again.error.command and again.error.command[0] == "lvremove"
    assert again.error.stderr
    runner = SubprocessRunner()
    runner.run(["vgremove", "--yes", vg])
    runner.run(["pvremove", dev])


def test_shared_vg_uses_shared_flag_when_lvmlockd_runs(lvm_env: Path) -> None:
    seen: list[list[str]] = []

    class Recording(SubprocessRunner):
        def run(self, argv, **kw):  # type: ignore[no-untyped-def, override]
            seen.append(list(argv))
            if argv[0] == "vgs":  # the extent size read back after vgcreate
                report = '{"report": [{"vg": [{"vg_name": "vgs1", "vg_extent_size": "4194304"}]}]}'
                return super().run(["echo", report], **kw)
            return super().run(["true"], **kw)

    storage = LinuxStorage(Recording(), lockd_running=lambda: True)
    assert storage.vgcreate("vgs1", ["/dev/loop7"], local=False)["shared"] is True
    assert seen[0] == ["vgcreate", "--shared", "--", "vgs1", "/dev/loop7"]


def test_mkfs_gfs2_then_inspect(harness: Harness, loop_device: Callable[[int], str]) -> None:
    if shutil.which("mkfs.gfs2") is None:
        pytest.skip("gfs2-utils is not installed")
    dev = loop_device(300)
    made = harness.run("mkfs_gfs2", device=dev, cluster="havenc", fs="shared0", journals=3)
    assert made.ok, made.error
    info = harness.run("gfs2_inspect", device=dev)
    assert info.ok, info.error
    assert info.data["lock_protocol"] == "lock_dlm"
    assert info.data["lock_table"] == "havenc:shared0"
    assert info.data["journals"] == 3
    assert info.data["journal_names"] == ["journal0", "journal1", "journal2"]


def test_gfs2_jadd_needs_a_mounted_filesystem(harness: Harness, tmp_path: Path) -> None:
    result = harness.run("gfs2_jadd", mount_point=str(tmp_path), journals=1)
    assert result.error is not None and result.error.code == "not_mounted"


def test_mount_gfs2(harness: Harness, loop_device: Callable[[int], str], tmp_path: Path) -> None:
    has_gfs2 = "gfs2" in Path("/proc/filesystems").read_text().split()
    dev = loop_device(300)
    assert harness.run("mkfs_gfs2", device=dev, cluster="havenc", fs="m0", journals=1).ok
    result = harness.run("mount", device=dev, mount_point=str(tmp_path / "m"), fstype="gfs2")
    if not has_gfs2:
        assert result.error is not None and result.error.code == "not_supported"
        assert "gfs2" in result.error.message
        pytest.skip("'gfs2' not in /proc/filesystems: the kernel cannot mount GFS2 here")
    assert result.ok, result.error  # pragma: no cover - needs a gfs2 kernel with dlm


def test_fstab_entry_is_idempotent(harness: Harness, tmp_path: Path) -> None:
    fstab = tmp_path / "fstab"
    fstab.write_text("# comment\n/dev/vda1\t/\text4\tdefaults\t0\t1\n")
    args = {"device": "/dev/vg0/gfs", "mount_point": "/srv/gfs", "fstype": "gfs2"}
    first = harness.run("fstab_entry", **args, options="noatime,_netdev")
    assert first.ok and first.data["changed"]
    second = harness.run("fstab_entry", **args, options="noatime,_netdev")
    assert second.ok and not second.data["changed"]
    text = fstab.read_text()
    assert text.count("/srv/gfs") == 1
    assert "/dev/vda1\t/\text4" in text and "# comment" in text
    assert harness.run("fstab_entry", **args, present=False).data["changed"]
    assert "/srv/gfs" not in fstab.read_text()


def test_a_shared_lv_gets_a_boot_activation_unit_the_mount_requires(
    harness: Harness, tmp_path: Path
) -> None:
    """Nothing activates a shared VG's LV at boot: a oneshot unit does, the mount waits for it
    and comes before the host's drain unit; dropping the fstab line drops the unit."""
    args = {"device": "/dev/vg_shared/guest-roots", "mount_point": "/guest_roots"}
    added = harness.run(
        "fstab_entry", **args, fstype="gfs2", options="noatime,_netdev", activate_shared=True
    )
    assert added.ok, added.error
    unit = added.data["unit"]
    assert unit == "haven-activate-vg_shared-guest--roots.service"
    line = (tmp_path / "fstab").read_text()
    assert f"x-systemd.requires={unit}" in line and "x-systemd.device-timeout=" in line
    # unmounted at shutdown only after the drain unit's stop has moved the guests away
    assert "x-systemd.before=haven-drain-testhost.service" in line
    text = (tmp_path / "systemd" / "system" / unit).read_text()
    assert "Requires=haven-cluster-join.service\nAfter=haven-cluster-join.service" in text
    assert "dlm.service" not in text  # only the join unit starts dlm (gated on quorum)
    assert "/sbin/lvchange -asy vg_shared/guest-roots" in text
    assert "/sbin/vgchange --lock-start vg_shared &&" in text and "$$n" in text
    removed = harness.run("fstab_entry", **args, fstype="gfs2", present=False, activate_shared=True)
    assert removed.ok and removed.data["changed"]
    assert not (tmp_path / "systemd" / "system" / unit).exists()
    bad = harness.run("fstab_entry", device="/dev/sdb", mount_point="/x", fstype="gfs2",
                      activate_shared=True)  # fmt: skip
    assert bad.error is not None and "not an LV path" in bad.error.message


def test_unmount_of_unmounted_is_a_no_op(harness: Harness, tmp_path: Path) -> None:
    result = harness.run("unmount", mount_point=str(tmp_path / "nothing"))
    assert result.ok and result.data["changed"] is False


def test_lvm_report_parsing() -> None:
    out = '{"report": [{"vg": [{"vg_name": "a", "vg_size": "4194304", "vg_attr": "wz--n-"}]}]}'
    assert parse_lvm_report(out, "vg") == [
        {"vg_name": "a", "vg_size": 4194304, "vg_attr": "wz--n-"}
    ]
