"""The storage driver: block devices, LVM (JSON reports) and GFS2, through the command runner.

Every device, VG, LV and mount point is validated by `agent.names` before it reaches an argv.
LVM's configuration comes from the environment (`LVM_SYSTEM_DIR`), which is how the lab points
LVM at loop devices with a private config.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from agent import names
from agent.cluster_stack import parse_dlm_status, with_nodes, without_node
from agent.errors import AgentError
from agent.files import replace_file
from agent.protocol import FstabEntryArgs
from agent.runner import Runner

LVM_REPORT = ["--reportformat", "json", "--units", "b", "--nosuffix"]
PV_FIELDS = "pv_name,vg_name,pv_size,pv_free,pv_uuid"
VG_FIELDS = "vg_name,vg_size,vg_free,vg_uuid,vg_attr,lv_count,pv_count,vg_lock_type"
LV_FIELDS = "lv_name,vg_name,lv_size,lv_attr,lv_uuid,lv_path"
# SERIAL and WWN identify a shared disk (a LUN) across hosts, whatever its name on each.
LSBLK = [
    "lsblk",
    "--json",
    "--bytes",
    "-o",
    "NAME,PATH,SIZE,TYPE,FSTYPE,MOUNTPOINT,UUID,LABEL,SERIAL,WWN,MODEL",
]
_INT_FIELDS = {"pv_size", "pv_free", "vg_size", "vg_free", "lv_count", "pv_count", "lv_size"}
_JOURNAL_RE = re.compile(r"\bjournal(\d+)\b")
# Under QEMU TCG (the storage lab) LVM on a shared VG takes 5-15 s, mount 10-15 s and gfs2_jadd
# up to a minute; a real host is faster. These bound the slow commands, not the usual ones.
SLOW_S = 300.0
# Activates one shared LV at boot for its GFS2 mount (fstab: x-systemd.requires=): the VG's
# lockspace needs corosync quorum, dlm and lvmlockd, which haven-cluster-join.service (the
# bootstrap's, console/bootstrap/cluster_stack.py) starts at boot in that order, gated on state.
# At shutdown (the reverse order) the mount goes first, then this unit deactivates the LV and
# leaves the VG's lockspace (refused, and ignored, while another LV of the VG is active), so
# that dlm has no lockspace left when it is stopped (console/bootstrap/cluster_stack.py).
# ($$ is a literal $ for systemd; the names passed agent.names' grammar.)
ACTIVATION_UNIT = """[Unit]
Description=Haven: activate {ref} shared for its GFS2 (mounted at boot after dlm)
Requires=haven-cluster-join.service
After=haven-cluster-join.service

[Service]
Type=oneshot
RemainAfterExit=yes
TimeoutStartSec=900
ExecStart=/bin/sh -c 'n=0; until /sbin/vgchange --lock-start {vg} && /sbin/lvchange -asy {ref}; \
do n=$$((n+1)); [ $$n -lt 150 ] || exit 1; sleep 5; done'
ExecStop=/sbin/lvchange -an {ref}
ExecStop=-/sbin/vgchange --lock-stop {vg}
"""
# How long dlm_fence_ack waits for this host's dlm to see the fenced node gone.
DLM_LOSS_WAIT_S = 180.0
ACTIVATION = {"shared": "sy", "exclusive": "ey", "off": "n"}
_CMAP_NODE_RE = re.compile(
    r"^nodelist\.node\.(\d+)\.(name|nodeid|ring0_addr) \([a-z0-9]+\) = (.*)$"
)


class Storage(Protocol):
    """What the agent needs from the host's storage stack."""

    def probe(self) -> dict[str, Any]: ...
    def pvcreate(self, device: str) -> dict[str, Any]: ...
    def vgcreate(
        self, vg: str, devices: Sequence[str], local: bool, extent_size_bytes: int | None = None
    ) -> dict[str, Any]: ...
    def lvcreate(
        self, vg: str, lv: str, size_bytes: int, activate: bool = True
    ) -> dict[str, Any]: ...
    def lvextend(self, vg: str, lv: str, size_bytes: int) -> dict[str, Any]: ...
    def lvremove(self, vg: str, lv: str) -> dict[str, Any]: ...
    def mkfs_gfs2(self, device: str, cluster: str, fs: str, journals: int) -> dict[str, Any]: ...
    def gfs2_inspect(self, device: str) -> dict[str, Any]: ...
    def gfs2_jadd(self, mount_point: str, journals: int) -> dict[str, Any]: ...
    def fstab_entry(self, entry: FstabEntryArgs) -> dict[str, Any]: ...
    def mount(
        self, device: str, mount_point: str, fstype: str, options: str | None
    ) -> dict[str, Any]: ...
    def unmount(self, mount_point: str) -> dict[str, Any]: ...
    def vg_lockstart(self, vg: str) -> dict[str, Any]: ...
    def lv_activate(self, vg: str, lv: str, mode: str) -> dict[str, Any]: ...
    def lv_refresh(self, vg: str, lv: str) -> dict[str, Any]: ...
    def lv_usage(self, vg: str, lv: str, refuse_mounted: bool) -> dict[str, Any]: ...
    def gfs2_grow(self, mount_point: str) -> dict[str, Any]: ...
    def dlm_fence_ack(self, node: str) -> dict[str, Any]: ...
    def corosync_remove_node(self, node: str) -> dict[str, Any]: ...
    def corosync_add_node(self, node: str, address: str, nodeid: int) -> dict[str, Any]: ...


def parse_lvm_report(stdout: str, section: str) -> list[dict[str, Any]]:
    """Rows of one LVM JSON report section, with sizes and counts as ints."""
    try:
        report = json.loads(stdout)["report"]
    except (ValueError, KeyError, TypeError) as exc:
        raise AgentError("command_failed", f"LVM report is not JSON: {exc}") from exc
    rows: list[dict[str, Any]] = []
    for part in report:
        for row in part.get(section, []):
            rows.append({k: _intish(k, v) for k, v in row.items()})
    return rows


def _intish(key: str, value: Any) -> Any:
    if key in _INT_FIELDS and isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def parse_tunegfs2(stdout: str) -> dict[str, str]:
    """`tunegfs2 -l` lines "Key: value" as a dict."""
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def lvmlockd_running(proc: Path = Path("/proc")) -> bool:
    """Whether an lvmlockd process runs on this host (needed for shared VGs)."""
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "lvmlockd":
                    return True
            except OSError:
                continue
    return False


class LinuxStorage:
    """The real storage driver."""

    def __init__(
        self,
        runner: Runner,
        *,
        fstab: Path = Path("/etc/fstab"),
        proc: Path = Path("/proc"),
        lockd_running: Callable[[], bool] | None = None,
        drain_unit: str | None = None,
    ) -> None:
        self._run = runner.run
        self._fstab = fstab
        self._drain_unit = drain_unit
        self._proc = proc
        self._lockd_running = lockd_running or (lambda: lvmlockd_running(proc))

    # probe ---------------------------------------------------------------------------
    def probe(self) -> dict[str, Any]:
        lsblk = json.loads(self._run(LSBLK).stdout or "{}")
        return {
            "blockdevices": lsblk.get("blockdevices", []),
            "pvs": self._report("pvs", PV_FIELDS, "pv"),
            "vgs": self._report("vgs", VG_FIELDS, "vg"),
            "lvs": self._report("lvs", LV_FIELDS, "lv"),
        }

    def _report(self, tool: str, fields: str, section: str) -> list[dict[str, Any]]:
        return parse_lvm_report(self._run([tool, *LVM_REPORT, "-o", fields]).stdout, section)

    # LVM -----------------------------------------------------------------------------
    def pvcreate(self, device: str) -> dict[str, Any]:
        self._run(["pvcreate", "--", names.device(device)])
        return {"device": device}

    def vgcreate(
        self, vg: str, devices: Sequence[str], local: bool, extent_size_bytes: int | None = None
    ) -> dict[str, Any]:
        names.vg(vg)
        if not devices:
            raise AgentError("bad_request", "vgcreate needs at least one device")
        size = extent_size_bytes
        if size is not None and (size < 1024 or size & (size - 1) or size % 1024):
            raise AgentError(
                "bad_request", f"extent size {size} is not a power of two of at least 1 KiB"
            )
        extent = ["--physicalextentsize", f"{size // 1024}k"] if size else []
        devs = [names.device(d) for d in devices]
        shared = not local
        if shared and not self._lockd_running():
            raise AgentError(
                "clustered_locking_unavailable",
                "clustered locking unavailable: lvmlockd is not running on this host, so a "
                "shared VG cannot be created; pass local=true for a host-local VG",
            )
        self._run(
            ["vgcreate", *(["--shared"] if shared else []), *extent, "--", vg, *devs],
            timeout_s=SLOW_S,
        )
        return {"vg": vg, "shared": shared, "extent_size_bytes": self._extent_size(vg)}

    def _extent_size(self, vg: str) -> int:
        out = self._run(["vgs", *LVM_REPORT, "-o", "vg_name,vg_extent_size", "--", vg]).stdout
        rows = parse_lvm_report(out, "vg")
        return int(rows[0]["vg_extent_size"]) if rows else 0

    def lvcreate(self, vg: str, lv: str, size_bytes: int, activate: bool = True) -> dict[str, Any]:
        """``activate=False`` (a shared VG's LV): created inactive, so every host can then
        activate it shared (``lv_activate``); lvcreate would otherwise take it exclusive."""
        names.vg(vg)
        names.lv(lv)
        off = [] if activate else ["--activate", "n"]
        self._run(
            ["lvcreate", "--yes", *off, "-n", lv, "-L", f"{size_bytes}b", "--", vg],
            timeout_s=SLOW_S,
        )
        return {"vg": vg, "lv": lv, "size_bytes": self._lv_size(vg, lv)}

    def lvextend(self, vg: str, lv: str, size_bytes: int) -> dict[str, Any]:
        names.vg(vg)
        names.lv(lv)
        self._run(["lvextend", "-L", f"{size_bytes}b", "--", f"{vg}/{lv}"], timeout_s=SLOW_S)
        return {"vg": vg, "lv": lv, "size_bytes": self._lv_size(vg, lv)}

    def lvremove(self, vg: str, lv: str) -> dict[str, Any]:
        names.vg(vg)
        names.lv(lv)
        self.lv_usage(vg, lv, refuse_mounted=True)
        self._run(["lvremove", "--yes", "--", f"{vg}/{lv}"], timeout_s=SLOW_S)
        return {"vg": vg, "lv": lv}

    def _lv_size(self, vg: str, lv: str) -> int | None:
        out = self._run(["lvs", *LVM_REPORT, "-o", LV_FIELDS, "--", f"{vg}/{lv}"]).stdout
        rows = parse_lvm_report(out, "lv")
        return int(rows[0]["lv_size"]) if rows else None

    # GFS2 ----------------------------------------------------------------------------
    def mkfs_gfs2(self, device: str, cluster: str, fs: str, journals: int) -> dict[str, Any]:
        table = f"{names.cluster(cluster)}:{names.fs_name(fs)}"
        dev = names.device(device)
        self._run(
            ["mkfs.gfs2", "-O", "-p", "lock_dlm", "-t", table, "-j", str(journals), dev],
            timeout_s=SLOW_S,
        )
        return {"device": dev, "lock_table": table, "journals": journals}

    def gfs2_inspect(self, device: str) -> dict[str, Any]:
        dev = names.device(device)
        sb = parse_tunegfs2(self._run(["tunegfs2", "-l", dev]).stdout)
        jindex = self._run(["gfs2_edit", "-p", "jindex", dev]).stdout
        journal_names = sorted(set(_JOURNAL_RE.findall(jindex)), key=int)
        return {
            "device": dev,
            "lock_protocol": sb.get("Lock protocol"),
            "lock_table": sb.get("Lock table"),
            "uuid": sb.get("UUID"),
            "journals": len(journal_names),
            "journal_names": [f"journal{n}" for n in journal_names],
        }

    def gfs2_jadd(self, mount_point: str, journals: int) -> dict[str, Any]:
        mp = names.mount_point(mount_point)
        if self._mounted_type(mp) != "gfs2":
            raise AgentError("not_mounted", f"{mp} is not a mounted gfs2 filesystem")
        self._run(["gfs2_jadd", "-j", str(journals), mp], timeout_s=SLOW_S)
        return {"mount_point": mp, "journals_added": journals}

    # fstab and mounts ----------------------------------------------------------------
    def fstab_entry(self, entry: FstabEntryArgs) -> dict[str, Any]:
        """Add (or, ``present`` false, drop) the mount point's fstab line. ``activate_shared``
        (an LV of a shared VG, ``/dev/VG/LV``): nothing activates it at boot, so a oneshot unit
        does (lock-start, then ``lvchange -asy``, retried until quorum and dlm allow it) and the
        mount requires it: GFS2 mounts at boot after dlm. With ``drain_unit`` (the host's
        clean-shutdown drain, agent/shutdown.py) the mount is ordered before it, so at shutdown
        it is unmounted only after the drain."""
        device, mount_point, present = entry.device, entry.mount_point, entry.present
        options = names.mount_options(entry.options)
        unit = None
        if entry.activate_shared:
            vg, lv = _vg_lv(device)
            unit = self._activation_unit(vg, lv, present)
            if present:
                options += f",x-systemd.requires={unit},x-systemd.device-timeout=900"
                if self._drain_unit:
                    # unmounted at shutdown only once the drain has moved the guests away
                    # (their disks are here; agent/shutdown.py)
                    options += f",x-systemd.before={self._drain_unit}"
        fstype = names.fstype(entry.fstype)
        line = "\t".join(
            [names.device(device), names.mount_point(mount_point), fstype, options, "0", "0"]
        )
        old = self._fstab.read_text() if self._fstab.exists() else ""
        kept = [ln for ln in old.splitlines() if _fstab_mount_point(ln) != mount_point]
        new_lines = [*kept, line] if present else kept
        new = "\n".join(new_lines) + ("\n" if new_lines else "")
        changed = new != old
        if changed:
            replace_file(self._fstab, new)
        # No daemon-reload: systemd reads fstab and the unit at the next boot, which is when
        # they matter (mount runs now); under TCG a reload took 22 s and the agent's
        # heartbeats stopped meanwhile.
        return {"line": line, "present": present, "changed": changed, "unit": unit}

    def _activation_unit(self, vg: str, lv: str, present: bool) -> str:
        base = f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"
        if "+" in base:  # not valid in a unit name
            base = hashlib.sha256(f"{vg}/{lv}".encode()).hexdigest()[:16]
        unit = f"haven-activate-{base}.service"
        path = self._fstab.parent / "systemd" / "system" / unit
        if not present:
            path.unlink(missing_ok=True)
            return unit
        ref = f"{vg}/{lv}"
        text = ACTIVATION_UNIT.format(vg=vg, ref=ref)
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            replace_file(path, text)
        return unit

    def mount(
        self, device: str, mount_point: str, fstype: str, options: str | None
    ) -> dict[str, Any]:
        dev, mp, fst = names.device(device), names.mount_point(mount_point), names.fstype(fstype)
        if not self._kernel_has(fst):
            # gfs2 (and most file systems) is a module: load it once, as mount(8) would
            with contextlib.suppress(AgentError):
                self._run(["modprobe", "--", fst], check=False, timeout_s=60.0)
        if not self._kernel_has(fst):
            raise AgentError(
                "not_supported", f"the kernel lacks {fst!r} (not in /proc/filesystems)"
            )
        if self._mounted_type(mp) is not None:
            return {"mount_point": mp, "changed": False}
        opts = ["-o", names.mount_options(options)] if options else []
        Path(mp).mkdir(parents=True, exist_ok=True)
        self._run(["mount", "-t", fst, *opts, "--", dev, mp], timeout_s=SLOW_S)
        return {"mount_point": mp, "changed": True}

    def unmount(self, mount_point: str) -> dict[str, Any]:
        mp = names.mount_point(mount_point)
        if self._mounted_type(mp) is None:
            return {"mount_point": mp, "changed": False}
        self._run(["umount", "--", mp], timeout_s=SLOW_S)
        return {"mount_point": mp, "changed": True}

    # shared VGs (lvmlockd) and GFS2 on every host ----------------------------------------
    def vg_lockstart(self, vg: str) -> dict[str, Any]:
        """Join the VG's lockspace here (every host, before it uses a shared VG)."""
        names.vg(vg)
        self._run(["vgchange", "--lockstart", "--", vg], timeout_s=SLOW_S)
        return {"vg": vg, "lock_started": True}

    def lv_activate(self, vg: str, lv: str, mode: str) -> dict[str, Any]:
        """``lvchange -asy`` (shared, for GFS2 on every host), ``-aey`` or ``-an``."""
        names.vg(vg)
        names.lv(lv)
        if mode not in ACTIVATION:
            raise AgentError(
                "bad_request", f"activation mode {mode!r}: one of {sorted(ACTIVATION)}"
            )
        self._run(["lvchange", f"-a{ACTIVATION[mode]}", "--", f"{vg}/{lv}"], timeout_s=SLOW_S)
        return {"vg": vg, "lv": lv, "activation": mode}

    def lv_refresh(self, vg: str, lv: str) -> dict[str, Any]:
        """Reload the LV's size from the metadata after another host extended it (Debian's
        lvmlockd does not refresh other hosts: "work delayed refresh_lv")."""
        names.vg(vg)
        names.lv(lv)
        self._run(["lvchange", "--refresh", "--", f"{vg}/{lv}"], timeout_s=SLOW_S)
        return {"vg": vg, "lv": lv, "size_bytes": self._lv_size(vg, lv)}

    def lv_usage(self, vg: str, lv: str, refuse_mounted: bool) -> dict[str, Any]:
        """Where the LV is mounted on this host; ``refuse_mounted``: AgentError("in_use")."""
        names.vg(vg)
        names.lv(lv)
        nodes = {
            f"/dev/{vg}/{lv}",
            f"/dev/mapper/{vg.replace('-', '--')}-{lv.replace('-', '--')}",
        }
        nodes |= {os.path.realpath(n) for n in list(nodes) if os.path.exists(n)}
        mounted = sorted(mp for dev, mp, _ in self._mounts() if dev in nodes)
        if refuse_mounted and mounted:
            raise AgentError(
                "in_use", f"{vg}/{lv} is mounted at {', '.join(mounted)}: unmount it first"
            )
        return {"vg": vg, "lv": lv, "mounted": mounted}

    def gfs2_grow(self, mount_point: str) -> dict[str, Any]:
        """Grow a mounted GFS2 to its (extended) LV; reports the size before and after
        (gfs2_grow exits 0 even when it did nothing)."""
        mp = names.mount_point(mount_point)
        if self._mounted_type(mp) != "gfs2":
            raise AgentError("not_mounted", f"{mp} is not a mounted gfs2 filesystem")
        before = os.statvfs(mp)
        self._run(["gfs2_grow", mp], timeout_s=SLOW_S)
        after = os.statvfs(mp)
        return {
            "mount_point": mp,
            "size_bytes_before": before.f_blocks * before.f_frsize,
            "size_bytes": after.f_blocks * after.f_frsize,
        }

    def dlm_fence_ack(self, node: str) -> dict[str, Any]:
        """Tell this host's dlm that ``node`` (a corosync node name) has been fenced, so GFS2
        recovers its journal now instead of waiting for a fence dlm cannot do itself.

        Haven fences a silent host within seconds, before corosync here has lost it (token +
        consensus: ~22 s with the storage lab's token): dlm only honours an acknowledgement of
        a node it has seen fail, so this waits until dlm reports the node gone (not ``M``)."""
        nodeid = self._nodeid(names.guest(node))
        deadline = time.monotonic() + DLM_LOSS_WAIT_S
        while True:
            done = self._run(["dlm_tool", "status"], timeout_s=30.0, check=False)
            state = parse_dlm_status(done.stdout).get(nodeid)
            if done.returncode == 0 and state != "M":
                break
            if time.monotonic() > deadline:
                words = (done.stderr.strip() or done.stdout.strip())[-300:]
                raise AgentError(
                    "still_member",
                    f"dlm here still has {node} (node {nodeid}) as a member after "
                    f"{DLM_LOSS_WAIT_S:g} s: not acknowledging a fence of a node it has not lost"
                    + (f" ({words})" if done.returncode else ""),
                )
            time.sleep(2.0)
        self._run(["dlm_tool", "fence_ack", str(nodeid)], timeout_s=60.0)
        return {"node": node, "nodeid": nodeid, "dlm_state": state}

    def _corosync_conf(self) -> Path:
        conf = self._fstab.parent / "corosync" / "corosync.conf"
        if not conf.exists():
            raise AgentError("not_found", f"{conf} does not exist: no corosync cluster here")
        return conf

    def _reload_corosync(self, conf: Path, text: str) -> None:
        """Write corosync.conf whole (never half: a new file renamed over it) and have the
        running corosync read it."""
        replace_file(conf, text)
        self._run(["corosync-cfgtool", "-R"], timeout_s=60.0)

    def corosync_remove_node(self, node: str) -> dict[str, Any]:
        """Drop ``node`` (a host removed from the cluster) from this host's corosync.conf and
        make the running corosync read it (``corosync-cfgtool -R``): the membership and the
        expected votes no longer count it. Idempotent: a node already gone changes nothing."""
        name, conf = names.guest(node), self._corosync_conf()
        new = without_node(conf.read_text(), name)
        if new is not None:
            self._reload_corosync(conf, new)
        left = self._nodelist()
        if any(name in (e.get("name"), e.get("ring0_addr")) for e in left.values()):
            raise AgentError(
                "command_failed",
                f"corosync here still lists {name} in its nodelist after the reload",
            )
        return {
            "node": name,
            "changed": new is not None,
            "nodes": sorted(e.get("name", "") for e in left.values()),
        }

    def corosync_add_node(self, node: str, address: str, nodeid: int) -> dict[str, Any]:
        """Add ``node`` (a host joining the cluster) at ``address`` as ``nodeid`` to this
        host's corosync.conf and make the running corosync read it (``corosync-cfgtool -R``):
        its knet links to the new node come up and the expected votes count it. Idempotent:
        a node already there the same way changes nothing; one there another way (another id
        or address) is refused before anything changed."""
        name, conf = names.guest(node), self._corosync_conf()
        try:
            new = with_nodes(conf.read_text(), [(nodeid, name, address)])
        except ValueError as exc:
            raise AgentError("conflict", f"corosync.conf here: {exc}") from None
        if new is not None:
            self._reload_corosync(conf, new)
        listed = self._nodelist()
        if not any(e.get("name") == name and e.get("nodeid") == str(nodeid)
                   for e in listed.values()):  # fmt: skip
            raise AgentError(
                "command_failed",
                f"corosync here does not list {name} as node {nodeid} after the reload",
            )
        return {
            "node": name,
            "nodeid": nodeid,
            "changed": new is not None,
            "nodes": sorted(e.get("name", "") for e in listed.values()),
        }

    def _nodelist(self) -> dict[str, dict[str, str]]:
        out = self._run(["corosync-cmapctl", "-b", "nodelist.node"], timeout_s=30.0).stdout
        entries: dict[str, dict[str, str]] = {}
        for line in out.splitlines():
            m = _CMAP_NODE_RE.match(line.strip())
            if m:
                entries.setdefault(m.group(1), {})[m.group(2)] = m.group(3).strip()
        return entries

    def _nodeid(self, node: str) -> int:
        for entry in self._nodelist().values():
            if node in (entry.get("name"), entry.get("ring0_addr")) and entry.get("nodeid"):
                return int(entry["nodeid"])
        raise AgentError("not_found", f"{node} is not in this host's corosync nodelist")

    def leave_shared_storage(self) -> list[str]:
        """At a clean shutdown, once no guest is left: unmount every GFS2, deactivate the
        shared VGs' LVs and leave every lockspace, so that dlm has none left when systemd
        stops it. The units a host gets are ordered so at shutdown (console/bootstrap/
        cluster_stack.py), but only units that are active stop, and a cluster formed and
        storage mounted at run time (no boot since) has neither its join nor its activation
        unit active, nor a mount unit that knows its fstab options: there systemd tried the
        unmount while the guests still used the GFS2, dlm was killed with a lockspace
        active, the survivors' ``lvm_vg_shared`` waited for a fence of a host that had shut
        down cleanly, and its own lvmlockd hung the poweroff (the storage lab, 2026-12-04).
        What was done, a line each; a step that fails ends it (the rest would fail too)."""
        said: list[str] = []
        mounted = [mp for _, mp, fstype in self._mounts() if fstype == "gfs2"]
        try:
            for mount_point in mounted:
                try:
                    self._run(["umount", "--", mount_point], timeout_s=SLOW_S)
                except AgentError:
                    if self._mounted_type(mount_point) is not None:
                        raise
                    # (systemd's own stop of its mount unit got there first)
                said.append(f"unmounted {mount_point}")
            if not self._lockd_running():
                return said
            shared = [
                vg["vg_name"]
                for vg in self._report("vgs", "vg_name,vg_lock_type", "vg")
                if vg.get("vg_lock_type") == "dlm"
            ]
            for vg in shared:
                self._run(["vgchange", "-an", "--", vg], timeout_s=SLOW_S)
                self._run(["vgchange", "--lock-stop", "--", vg], timeout_s=SLOW_S)
                said.append(f"{vg}: deactivated, lockspace left")
            self._run(["lvmlockctl", "--stop-lockspaces", "--wait", "1"], timeout_s=SLOW_S)
            said.append("every lockspace left")
        except AgentError as exc:
            said.append(f"stopped: {exc.message}")
        return said

    def _kernel_has(self, fstype: str) -> bool:
        text = (self._proc / "filesystems").read_text()
        return any(line.split()[-1] == fstype for line in text.splitlines() if line.split())

    def _mounts(self) -> list[tuple[str, str, str]]:
        """(device, mount point, type) of each line of /proc/mounts."""
        lines = (line.split() for line in (self._proc / "mounts").read_text().splitlines())
        return [(f[0], f[1], f[2]) for f in lines if len(f) >= 3]

    def shared_mounts(self) -> list[str] | None:
        """The mount points of the GFS2 file systems mounted here, for the heartbeat (None if
        /proc/mounts cannot be read): the console starts and moves a guest with a disk on one
        only to hosts that have it mounted."""
        try:
            return sorted({mp for _, mp, t in self._mounts() if t == "gfs2"})
        except OSError:
            return None

    def _mounted_type(self, mount_point: str) -> str | None:
        return next((t for _, mp, t in self._mounts() if mp == mount_point), None)


def _vg_lv(device: str) -> tuple[str, str]:
    parts = names.device(device).split("/")
    if len(parts) != 4:
        raise AgentError("bad_request", f"{device} is not an LV path (/dev/VG/LV)")
    return names.vg(parts[2]), names.lv(parts[3])


def _fstab_mount_point(line: str) -> str | None:
    fields = line.split()
    if len(fields) < 2 or fields[0].startswith("#"):
        return None
    return fields[1]
