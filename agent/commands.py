"""Command dispatch: one small handler per command kind, each parsing its args before acting.

`Dispatcher.handle` never raises: every failure becomes a Result with ok=False and an error code
from `protocol.ERROR_CODES`. `ordering_key` tells the executor which commands must not overlap.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent import hvconfig, names
from agent.errors import AgentError
from agent.fencing import Fencing
from agent.hypervisor import Hypervisor, guest_name_from_xml
from agent.protocol import STORAGE_COMMANDS, Command, GuestState, Result
from agent.storage import Storage

log = logging.getLogger(__name__)

GUEST_KINDS = {"start", "shutdown", "destroy", "undefine", "migrate"}
MAX_TIMEOUT_S = 24 * 3600


class Args:
    """Typed access to a command's args; `done()` rejects fields nobody asked for."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self._raw = raw
        self._seen: set[str] = set()

    def _get(self, key: str, default: Any, required: bool) -> Any:
        self._seen.add(key)
        if key not in self._raw:
            if required:
                raise AgentError("bad_request", f"missing field {key!r}")
            return default
        return self._raw[key]

    def text(self, key: str, default: str | None = None, *, required: bool = True) -> str:
        value = self._get(key, default, required and default is None)
        if not isinstance(value, str):
            raise AgentError("bad_request", f"field {key!r} must be a string")
        return value

    def opt_text(self, key: str) -> str | None:
        value = self._get(key, None, False)
        if value is not None and not isinstance(value, str):
            raise AgentError("bad_request", f"field {key!r} must be a string")
        return value

    def integer(self, key: str, default: int | None = None, *, lo: int = 0, hi: int = 2**63) -> int:
        value = self._get(key, default, default is None)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise AgentError("bad_request", f"field {key!r} must be an integer in [{lo}, {hi}]")
        return int(value)

    def number(self, key: str, default: float | None = None, *, hi: float = MAX_TIMEOUT_S) -> float:
        value = self._get(key, default, default is None)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= hi:
            raise AgentError("bad_request", f"field {key!r} must be a number in (0, {hi}]")
        return float(value)

    def opt_number(self, key: str) -> float | None:
        return self.number(key) if key in self._raw and self._raw[key] is not None else None

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, default, False)
        if not isinstance(value, bool):
            raise AgentError("bad_request", f"field {key!r} must be true or false")
        return value

    def texts(self, key: str) -> list[str]:
        value = self._get(key, None, True)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise AgentError("bad_request", f"field {key!r} must be a list of strings")
        return value

    def mapping(self, key: str) -> dict[str, object]:
        value = self._get(key, {}, False)
        if not isinstance(value, dict):
            raise AgentError("bad_request", f"field {key!r} must be an object")
        return value

    def done(self) -> None:
        extra = set(self._raw) - self._seen
        if extra:
            raise AgentError("bad_request", f"unexpected fields: {sorted(extra)}")


_PASSWORD_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_FERNET_KEY_RE = re.compile(r"[A-Za-z0-9_-]{43}=")


def ordering_key(cmd: Command) -> str | None:
    """Commands with the same key run one after another, in arrival order; None = any time."""
    if cmd.kind in GUEST_KINDS:
        guest = cmd.args.get("guest")
        return f"guest:{guest}" if isinstance(guest, str) else None
    if cmd.kind == "define":
        try:
            return f"guest:{guest_name_from_xml(str(cmd.args.get('xml', '')))}"
        except AgentError:
            return None
    if cmd.kind in STORAGE_COMMANDS:
        return "storage"  # LVM and fstab edits are host-global
    if cmd.kind in ("configure_migration", "tls_request"):
        return "config"
    return None


def _guest(state: GuestState, **extra: Any) -> dict[str, Any]:
    return {**asdict(state), **extra}


@dataclass
class Dispatcher:
    """Turns a Command into a Result using the injected drivers."""

    host: str
    hypervisor: Hypervisor
    storage: Storage
    fencing: Fencing
    libvirt_config_dir: Path = Path("/etc/libvirt")
    pki_dir: Path = Path("/etc/pki")  # libvirt's TLS files (agent/hvconfig.py)
    # writes new broker credentials where this agent reads them, then restarts it (worker.py)
    rotate: Callable[[str, str], dict[str, Any]] | None = None
    _table: dict[str, Callable[[Args], dict[str, Any]]] = field(init=False)

    def __post_init__(self) -> None:
        self._table = {
            name.removeprefix("_do_"): getattr(self, name)
            for name in dir(self)
            if name.startswith("_do_")
        }

    def kinds(self) -> set[str]:
        return set(self._table)

    def handle(self, cmd: Command) -> Result:
        started = time.monotonic()
        try:
            handler = self._table.get(cmd.kind)
            if handler is None:
                raise AgentError("unknown_command", f"unknown command kind {cmd.kind!r}")
            data = handler(Args(cmd.args))
            return self._result(cmd, started, ok=True, data=data)
        except AgentError as exc:
            log.info("command %s (%s) failed: %s: %s", cmd.id, cmd.kind, exc.code, exc.message)
            return self._result(cmd, started, ok=False, error=exc)
        except Exception as exc:  # a bug: report it, keep the agent alive
            log.exception("command %s (%s) crashed", cmd.id, cmd.kind)
            err = AgentError("internal", f"{type(exc).__name__}: {exc}")
            return self._result(cmd, started, ok=False, error=err)

    def _result(
        self,
        cmd: Command,
        started: float,
        *,
        ok: bool,
        data: dict[str, Any] | None = None,
        error: AgentError | None = None,
    ) -> Result:
        return Result(
            host=self.host,
            id=cmd.id,
            command=cmd.kind,
            ok=ok,
            data=data or {},
            error=error.info() if error else None,
            duration_s=round(time.monotonic() - started, 6),
        )

    # this agent's own credentials -----------------------------------------------------
    def _do_rotate_credentials(self, a: Args) -> dict[str, Any]:
        password, seal_key = a.text("password"), a.text("seal_secret")
        a.done()
        if not _PASSWORD_RE.fullmatch(password) or not _FERNET_KEY_RE.fullmatch(seal_key):
            raise AgentError("bad_request", "the new credentials are not well-formed")
        if self.rotate is None:
            raise AgentError(
                "not_supported",
                "this agent was not started with --broker-file, so it cannot keep new "
                "credentials: bootstrap the host again over SSH",
            )
        return self.rotate(password, seal_key)

    # hypervisor ---------------------------------------------------------------------
    def _do_define(self, a: Args) -> dict[str, Any]:
        xml = a.text("xml")
        a.done()
        return _guest(self.hypervisor.define(xml))

    def _do_start(self, a: Args) -> dict[str, Any]:
        guest, resume = names.guest(a.text("guest")), a.flag("resume", False)
        a.done()
        state, changed, resumed = self.hypervisor.start(guest, resume)
        return _guest(state, changed=changed, resumed=resumed)

    def _do_shutdown(self, a: Args) -> dict[str, Any]:
        guest, timeout = names.guest(a.text("guest")), a.number("timeout_s", 60.0)
        save = a.flag("save", False)
        a.done()
        save_error: dict[str, Any] = {}
        if save:
            try:
                return _guest(self.hypervisor.managed_save(guest), how="saved")
            except AgentError as exc:
                if exc.code == "not_found":
                    raise
                log.warning("managed save of %s refused (%s): shutting it down", guest, exc)
                save_error = {"save_error": exc.message}
        state, how = self.hypervisor.shutdown(guest, timeout)
        return _guest(state, how=how, **save_error)

    def _do_destroy(self, a: Args) -> dict[str, Any]:
        guest = names.guest(a.text("guest"))
        a.done()
        state, changed = self.hypervisor.destroy(guest)
        return _guest(state, changed=changed)

    def _do_undefine(self, a: Args) -> dict[str, Any]:
        guest = names.guest(a.text("guest"))
        a.done()
        return {"name": guest, "changed": self.hypervisor.undefine(guest)}

    def _do_migrate(self, a: Args) -> dict[str, Any]:
        guest = names.guest(a.text("guest"))
        dest = names.libvirt_uri(a.text("dest_uri"))
        migrate_uri, timeout = a.opt_text("migrate_uri"), a.opt_number("timeout_s")
        a.done()
        stats = self.hypervisor.migrate(guest, dest, migrate_uri, timeout)
        return {**asdict(stats), "duration_s": round(stats.duration_s, 3)}

    def _do_list_guests(self, a: Args) -> dict[str, Any]:
        active_only = a.flag("active_only", False)
        a.done()
        return {"guests": [asdict(g) for g in self.hypervisor.list_guests(active_only)]}

    def _do_dumpxml(self, a: Args) -> dict[str, Any]:
        guest = names.guest(a.text("guest"))
        a.done()
        xml = self.hypervisor.dumpxml(guest)
        states = {g.name: g.state for g in self.hypervisor.list_guests()}
        return {"name": guest, "xml": xml, "state": states.get(guest, "unknown")}

    def _do_host_facts(self, a: Args) -> dict[str, Any]:
        a.done()
        return asdict(self.hypervisor.host_facts())

    def _do_configure_migration(self, a: Args) -> dict[str, Any]:
        settings = hvconfig.MigrationSettings(
            listen_address=a.text("listen_address"),
            migration_address=a.text("migration_address"),
            port_min=a.integer("port_min", 49152, lo=1, hi=65535),
            port_max=a.integer("port_max", 49215, lo=1, hi=65535),
            transport=a.text("transport", "tcp"),
        )
        ca, cert = a.text("ca_certificate", ""), a.text("certificate", "")
        a.done()
        return hvconfig.apply(
            self.libvirt_config_dir,
            settings,
            pki=self.pki_dir,
            ca_certificate=ca,
            certificate=cert,
        )

    def _do_tls_request(self, a: Args) -> dict[str, Any]:
        a.done()
        return hvconfig.certificate_request(self.pki_dir, self.host)

    # storage ------------------------------------------------------------------------
    def _do_storage_probe(self, a: Args) -> dict[str, Any]:
        a.done()
        return self.storage.probe()

    def _do_pvcreate(self, a: Args) -> dict[str, Any]:
        device = names.device(a.text("device"))
        a.done()
        return self.storage.pvcreate(device)

    def _do_vgcreate(self, a: Args) -> dict[str, Any]:
        vg, devices, local = names.vg(a.text("vg")), a.texts("devices"), a.flag("local", False)
        extent = a.integer("extent_size_bytes", 0, lo=0)
        a.done()
        return self.storage.vgcreate(vg, [names.device(d) for d in devices], local, extent or None)

    def _do_lvcreate(self, a: Args) -> dict[str, Any]:
        vg, lv, size = names.vg(a.text("vg")), names.lv(a.text("lv")), a.integer("size_bytes", lo=1)
        activate = a.flag("activate", True)
        a.done()
        return self.storage.lvcreate(vg, lv, size, activate)

    def _do_lvextend(self, a: Args) -> dict[str, Any]:
        vg, lv, size = names.vg(a.text("vg")), names.lv(a.text("lv")), a.integer("size_bytes", lo=1)
        a.done()
        return self.storage.lvextend(vg, lv, size)

    def _do_lvremove(self, a: Args) -> dict[str, Any]:
        vg, lv = names.vg(a.text("vg")), names.lv(a.text("lv"))
        a.done()
        return self.storage.lvremove(vg, lv)

    def _do_mkfs_gfs2(self, a: Args) -> dict[str, Any]:
        device = names.device(a.text("device"))
        cluster, fs = names.cluster(a.text("cluster")), names.fs_name(a.text("fs"))
        journals = a.integer("journals", 2, lo=1, hi=256)
        a.done()
        return self.storage.mkfs_gfs2(device, cluster, fs, journals)

    def _do_gfs2_inspect(self, a: Args) -> dict[str, Any]:
        device = names.device(a.text("device"))
        a.done()
        return self.storage.gfs2_inspect(device)

    def _do_gfs2_jadd(self, a: Args) -> dict[str, Any]:
        mp, journals = (
            names.mount_point(a.text("mount_point")),
            a.integer("journals", 1, lo=1, hi=256),
        )
        a.done()
        return self.storage.gfs2_jadd(mp, journals)

    def _do_fstab_entry(self, a: Args) -> dict[str, Any]:
        device, mp = names.device(a.text("device")), names.mount_point(a.text("mount_point"))
        fstype, options = (
            names.fstype(a.text("fstype")),
            names.mount_options(a.text("options", "defaults")),
        )
        present = a.flag("present", True)
        activate_shared = a.flag("activate_shared", False)
        a.done()
        return self.storage.fstab_entry(device, mp, fstype, options, present, activate_shared)

    def _do_mount(self, a: Args) -> dict[str, Any]:
        device, mp = names.device(a.text("device")), names.mount_point(a.text("mount_point"))
        fstype, options = names.fstype(a.text("fstype")), a.opt_text("options")
        a.done()
        return self.storage.mount(device, mp, fstype, options)

    def _do_unmount(self, a: Args) -> dict[str, Any]:
        mp = names.mount_point(a.text("mount_point"))
        a.done()
        return self.storage.unmount(mp)

    def _do_vg_lockstart(self, a: Args) -> dict[str, Any]:
        vg = names.vg(a.text("vg"))
        a.done()
        return self.storage.vg_lockstart(vg)

    def _do_lv_activate(self, a: Args) -> dict[str, Any]:
        vg, lv, mode = names.vg(a.text("vg")), names.lv(a.text("lv")), a.text("mode", "shared")
        a.done()
        return self.storage.lv_activate(vg, lv, mode)

    def _do_lv_refresh(self, a: Args) -> dict[str, Any]:
        vg, lv = names.vg(a.text("vg")), names.lv(a.text("lv"))
        a.done()
        return self.storage.lv_refresh(vg, lv)

    def _do_lv_usage(self, a: Args) -> dict[str, Any]:
        vg, lv = names.vg(a.text("vg")), names.lv(a.text("lv"))
        refuse = a.flag("refuse_mounted", False)
        a.done()
        return self.storage.lv_usage(vg, lv, refuse)

    def _do_gfs2_grow(self, a: Args) -> dict[str, Any]:
        mp = names.mount_point(a.text("mount_point"))
        a.done()
        return self.storage.gfs2_grow(mp)

    def _do_dlm_fence_ack(self, a: Args) -> dict[str, Any]:
        node = names.guest(a.text("node"))
        a.done()
        return self.storage.dlm_fence_ack(node)

    def _do_corosync_remove_node(self, a: Args) -> dict[str, Any]:
        node = names.guest(a.text("node"))
        a.done()
        return self.storage.corosync_remove_node(node)

    def _do_corosync_add_node(self, a: Args) -> dict[str, Any]:
        node, address = names.guest(a.text("node")), names.ip_address(a.text("address"))
        nodeid = a.integer("nodeid", lo=1, hi=2**32 - 1)
        a.done()
        return self.storage.corosync_add_node(node, address, nodeid)

    # fencing ------------------------------------------------------------------------
    def _do_fence(self, a: Args) -> dict[str, Any]:
        agent, action = names.fence_agent(a.text("agent")), a.text("action")
        params, timeout = a.mapping("params"), a.number("timeout_s", 60.0)
        # a status query after a lost fence result: succeeds only if the host is in this state
        require_power = a.opt_text("require_power")
        a.done()
        return self.fencing.fence(agent, action, params, timeout, require_power=require_power)

    def _do_fence_metadata(self, a: Args) -> dict[str, Any]:
        agent = names.fence_agent(a.text("agent"))
        a.done()
        return self.fencing.metadata(agent)
