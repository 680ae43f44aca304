"""Command dispatch: one small handler per command kind, each given its kind's typed args.

The args are decoded by the protocol (agent/protocol.py ``decode_args``: types, ranges, names)
before a handler runs; a handler checks only what needs the host (a guest's XML, a fence
agent's metadata, a configuration file's addresses).

`Dispatcher.handle` never raises: every failure becomes a Result with ok=False and an error code
from `protocol.ERROR_CODES`. `ordering_key` tells the executor which commands must not overlap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent import hvconfig
from agent import protocol as p
from agent.errors import AgentError
from agent.fencing import Fencing
from agent.hypervisor import Hypervisor, guest_name_from_xml
from agent.protocol import STORAGE_COMMANDS, Command, GuestState, ProtocolError, Result
from agent.storage import Storage

log = logging.getLogger(__name__)

GUEST_KINDS = {"start", "shutdown", "destroy", "undefine", "migrate"}


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
    # kind -> its handler, which takes that kind's args class (protocol.ARGS[kind])
    _table: dict[str, Callable[[Any], dict[str, Any]]] = field(init=False)

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
            data = handler(cmd.typed_args())
            return self._result(cmd, started, ok=True, data=data)
        except ProtocolError as exc:
            log.info("command %s (%s) refused: %s: %s", cmd.id, cmd.kind, exc.code, exc.message)
            return self._result(cmd, started, ok=False, error=AgentError(exc.code, exc.message))
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
    def _do_rotate_credentials(self, a: p.RotateCredentialsArgs) -> dict[str, Any]:
        if self.rotate is None:
            raise AgentError(
                "not_supported",
                "this agent was not started with --broker-file, so it cannot keep new "
                "credentials: bootstrap the host again over SSH",
            )
        return self.rotate(a.password, a.seal_secret)

    # hypervisor ---------------------------------------------------------------------
    def _do_define(self, a: p.DefineArgs) -> dict[str, Any]:
        return _guest(self.hypervisor.define(a.xml))

    def _do_start(self, a: p.StartArgs) -> dict[str, Any]:
        state, changed, resumed = self.hypervisor.start(a.guest, a.resume)
        return _guest(state, changed=changed, resumed=resumed)

    def _do_shutdown(self, a: p.ShutdownArgs) -> dict[str, Any]:
        save_error: dict[str, Any] = {}
        if a.save:
            try:
                return _guest(self.hypervisor.managed_save(a.guest), how="saved")
            except AgentError as exc:
                if exc.code == "not_found":
                    raise
                log.warning("managed save of %s refused (%s): shutting it down", a.guest, exc)
                save_error = {"save_error": exc.message}
        state, how = self.hypervisor.shutdown(a.guest, a.timeout_s)
        return _guest(state, how=how, **save_error)

    def _do_destroy(self, a: p.DestroyArgs) -> dict[str, Any]:
        state, changed = self.hypervisor.destroy(a.guest)
        return _guest(state, changed=changed)

    def _do_undefine(self, a: p.UndefineArgs) -> dict[str, Any]:
        return {"name": a.guest, "changed": self.hypervisor.undefine(a.guest)}

    def _do_migrate(self, a: p.MigrateArgs) -> dict[str, Any]:
        stats = self.hypervisor.migrate(a.guest, a.dest_uri, a.migrate_uri, a.timeout_s)
        return {**asdict(stats), "duration_s": round(stats.duration_s, 3)}

    def _do_list_guests(self, a: p.ListGuestsArgs) -> dict[str, Any]:
        return {"guests": [asdict(g) for g in self.hypervisor.list_guests(a.active_only)]}

    def _do_dumpxml(self, a: p.DumpxmlArgs) -> dict[str, Any]:
        xml = self.hypervisor.dumpxml(a.guest)
        states = {g.name: g.state for g in self.hypervisor.list_guests()}
        return {"name": a.guest, "xml": xml, "state": states.get(a.guest, "unknown")}

    def _do_host_facts(self, a: p.HostFactsArgs) -> dict[str, Any]:
        return asdict(self.hypervisor.host_facts())

    def _do_configure_migration(self, a: p.ConfigureMigrationArgs) -> dict[str, Any]:
        settings = hvconfig.MigrationSettings(
            listen_address=a.listen_address,
            migration_address=a.migration_address,
            port_min=a.port_min,
            port_max=a.port_max,
            transport=a.transport,
        )
        return hvconfig.apply(
            self.libvirt_config_dir,
            settings,
            pki=self.pki_dir,
            ca_certificate=a.ca_certificate,
            certificate=a.certificate,
        )

    def _do_tls_request(self, a: p.TlsRequestArgs) -> dict[str, Any]:
        return hvconfig.certificate_request(self.pki_dir, self.host)

    # storage ------------------------------------------------------------------------
    def _do_storage_probe(self, a: p.StorageProbeArgs) -> dict[str, Any]:
        return self.storage.probe()

    def _do_pvcreate(self, a: p.PvcreateArgs) -> dict[str, Any]:
        return self.storage.pvcreate(a.device)

    def _do_vgcreate(self, a: p.VgcreateArgs) -> dict[str, Any]:
        extent = a.extent_size_bytes or None
        return self.storage.vgcreate(a.vg, a.devices, a.local, extent)

    def _do_lvcreate(self, a: p.LvcreateArgs) -> dict[str, Any]:
        return self.storage.lvcreate(a.vg, a.lv, a.size_bytes, a.activate)

    def _do_lvextend(self, a: p.LvextendArgs) -> dict[str, Any]:
        return self.storage.lvextend(a.vg, a.lv, a.size_bytes)

    def _do_lvremove(self, a: p.LvremoveArgs) -> dict[str, Any]:
        return self.storage.lvremove(a.vg, a.lv)

    def _do_mkfs_gfs2(self, a: p.MkfsGfs2Args) -> dict[str, Any]:
        return self.storage.mkfs_gfs2(a.device, a.cluster, a.fs, a.journals)

    def _do_gfs2_inspect(self, a: p.Gfs2InspectArgs) -> dict[str, Any]:
        return self.storage.gfs2_inspect(a.device)

    def _do_gfs2_jadd(self, a: p.Gfs2JaddArgs) -> dict[str, Any]:
        return self.storage.gfs2_jadd(a.mount_point, a.journals)

    def _do_fstab_entry(self, a: p.FstabEntryArgs) -> dict[str, Any]:
        return self.storage.fstab_entry(a)

    def _do_mount(self, a: p.MountArgs) -> dict[str, Any]:
        return self.storage.mount(a.device, a.mount_point, a.fstype, a.options)

    def _do_unmount(self, a: p.UnmountArgs) -> dict[str, Any]:
        return self.storage.unmount(a.mount_point)

    def _do_vg_lockstart(self, a: p.VgLockstartArgs) -> dict[str, Any]:
        return self.storage.vg_lockstart(a.vg)

    def _do_lv_activate(self, a: p.LvActivateArgs) -> dict[str, Any]:
        return self.storage.lv_activate(a.vg, a.lv, a.mode)

    def _do_lv_refresh(self, a: p.LvRefreshArgs) -> dict[str, Any]:
        return self.storage.lv_refresh(a.vg, a.lv)

    def _do_lv_usage(self, a: p.LvUsageArgs) -> dict[str, Any]:
        return self.storage.lv_usage(a.vg, a.lv, a.refuse_mounted)

    def _do_gfs2_grow(self, a: p.Gfs2GrowArgs) -> dict[str, Any]:
        return self.storage.gfs2_grow(a.mount_point)

    def _do_dlm_fence_ack(self, a: p.DlmFenceAckArgs) -> dict[str, Any]:
        return self.storage.dlm_fence_ack(a.node)

    def _do_corosync_remove_node(self, a: p.CorosyncRemoveNodeArgs) -> dict[str, Any]:
        return self.storage.corosync_remove_node(a.node)

    def _do_corosync_add_node(self, a: p.CorosyncAddNodeArgs) -> dict[str, Any]:
        return self.storage.corosync_add_node(a.node, a.address, a.nodeid)

    # fencing ------------------------------------------------------------------------
    def _do_fence(self, a: p.FenceArgs) -> dict[str, Any]:
        return self.fencing.fence(a)

    def _do_fence_metadata(self, a: p.FenceMetadataArgs) -> dict[str, Any]:
        return self.fencing.metadata(a.agent)
