"""The hypervisor driver: libvirt-python behind a small interface, plus lifecycle events.

libvirt's default event loop runs in a daemon thread, registered before any connection is
opened (events are lost otherwise). A lost connection is noticed by libvirt's close callback and
reopened lazily with exponential backoff, so a restarting libvirtd never crashes the agent.

Opt-in trace for the chaos suite (deploy/bench/chaos.py): with ``HAVEN_AGENT_TRACE=/path/file``
the driver appends one JSON line (wall-clock ``t``, ``pid``, ``event``, ``guest``) for every
guest it starts, stops, destroys or migrates, every lifecycle event and every (re)connection
(with the guests active then). Without the variable nothing is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import libvirt
import libvirt_qemu

from agent import names
from agent.errors import AgentError
from agent.protocol import GuestState, HealthSpec, ProtocolError

log = logging.getLogger(__name__)

MIGRATE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)


def migrate_flags(dest_uri: str, migrate_uri: str | None = None) -> int:
    """Over ``qemu+tls`` the guest's memory goes through the TLS connection of the two
    libvirtds too (tunnelled), so nothing of the migration crosses the network in clear;
    a separate migration URI (QEMU's own stream) is never tunnelled."""
    flags = int(MIGRATE_FLAGS)
    if dest_uri.startswith("qemu+tls://") and not migrate_uri:
        flags |= int(libvirt.VIR_MIGRATE_TUNNELLED)
    return flags


_DEFAULT_PORTS = {"tcp": 16509, "tls": 16514, "ssh": 22, "libssh": 22, "libssh2": 22}

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting_down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}

# libvirt lifecycle event -> (protocol state, {detail code: detail name})
_LIFECYCLE: dict[int, tuple[str, dict[int, str]]] = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: ("defined", {0: "added", 1: "updated", 2: "renamed"}),
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: ("undefined", {0: "removed", 1: "renamed"}),
    libvirt.VIR_DOMAIN_EVENT_STARTED: (
        "started",
        {0: "booted", 1: "migrated", 2: "restored", 3: "from_snapshot", 4: "wakeup"},
    ),
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: ("suspended", {0: "paused", 1: "migrated", 2: "ioerror"}),
    libvirt.VIR_DOMAIN_EVENT_RESUMED: ("resumed", {0: "unpaused", 1: "migrated"}),
    libvirt.VIR_DOMAIN_EVENT_STOPPED: (
        "stopped",
        {
            0: "shutdown",
            1: "destroyed",
            2: "crashed",
            3: "migrated",
            4: "saved",
            5: "failed",
            6: "from_snapshot",
        },
    ),
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: ("shutdown", {0: "finished", 1: "guest", 2: "host"}),
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: ("pmsuspended", {0: "memory", 1: "disk"}),
    # the guest OS panicked (pvpanic): QEMU may still run (on_crash preserve); a destroy that
    # follows (on_crash destroy) is a STOPPED/CRASHED event of its own
    libvirt.VIR_DOMAIN_EVENT_CRASHED: ("panicked", {0: "panicked", 1: "crashloaded"}),
}

# libvirt watchdog event action -> name (virDomainEventWatchdogAction)
WATCHDOG_ACTIONS = {
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_NONE: "none",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_PAUSE: "pause",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_RESET: "reset",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_POWEROFF: "poweroff",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_DEBUG: "debug",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_INJECTNMI: "inject-nmi",
}


def lifecycle_state(event: int, detail: int) -> tuple[str, str]:
    """Map a libvirt lifecycle (event, detail) to the protocol's (state, detail)."""
    state, details = _LIFECYCLE.get(event, ("unknown", {}))
    detail_name = details.get(detail, str(detail))
    if state == "stopped" and detail_name in {"crashed", "failed"}:
        state = "crashed"
    elif state == "stopped" and detail_name == "migrated":
        state = "migrated"
    return state, detail_name


@dataclass(frozen=True)
class LifecycleEvent:
    """A guest lifecycle change as the driver reports it."""

    guest: str
    uuid: str
    state: str
    detail: str


@dataclass(frozen=True)
class HostFacts:
    host_uuid: str | None
    hostname: str
    cpus: int
    memory_total_mib: int
    memory_free_mib: int
    libvirt_version: str
    hypervisor: str
    hypervisor_version: str


@dataclass(frozen=True)
class MigrationStats:
    name: str
    dest_uri: str
    duration_s: float
    downtime_ms: int | None


class Hypervisor(Protocol):
    """What the agent needs from a hypervisor."""

    def define(self, xml: str) -> GuestState: ...
    def start(self, name: str, resume: bool = False) -> tuple[GuestState, bool, bool]: ...
    def shutdown(self, name: str, timeout_s: float) -> tuple[GuestState, str]: ...
    def managed_save(self, name: str) -> GuestState: ...
    def destroy(self, name: str) -> tuple[GuestState, bool]: ...
    def undefine(self, name: str) -> bool: ...
    def migrate(
        self, name: str, dest_uri: str, migrate_uri: str | None, timeout_s: float | None
    ) -> MigrationStats: ...
    def list_guests(self, active_only: bool = False) -> list[GuestState]: ...
    def dumpxml(self, name: str) -> str: ...
    def host_facts(self) -> HostFacts: ...
    def connected(self) -> bool: ...


TRACE_ENV = "HAVEN_AGENT_TRACE"
_trace_lock = threading.Lock()


def trace(event: str, guest: str = "", t: float | None = None, **extra: object) -> None:
    """One line of the opt-in chaos trace (see the module docstring); a no-op when off."""
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    record = {"t": time.time() if t is None else t, "pid": os.getpid(), "event": event}
    line = json.dumps({**record, "guest": guest, **extra}) + "\n"
    with _trace_lock, open(path, "a") as f:
        f.write(line)


def version_string(value: int) -> str:
    return f"{value // 1_000_000}.{value // 1000 % 1000}.{value % 1000}"


_loop_lock = threading.Lock()
_loop_started = False


def start_event_loop() -> None:
    """Register libvirt's default event implementation and run it in a daemon thread (once)."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no stderr noise
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            # The one thread that delivers every lifecycle event of this process: if it died,
            # the agent would never hear of a crash again. An iteration that fails is logged.
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception as exc:
                    log.warning("libvirt event loop: %r; going on", exc)
                    time.sleep(0.1)

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


def guest_name_from_xml(xml: str) -> str:
    """The validated <name> of a domain XML document."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise AgentError("bad_request", f"domain XML does not parse: {exc}") from exc
    if root.tag != "domain":
        raise AgentError("bad_request", f"domain XML root is <{root.tag}>, not <domain>")
    return names.guest((root.findtext("name") or "").strip())


def _uuid_from_xml(xml: str) -> str:
    """The <uuid> of a domain XML document ('' when it has none: libvirt then keeps the
    existing definition's)."""
    return (ET.fromstring(xml).findtext("uuid") or "").strip()


def probe_tcp(uri: str, timeout_s: float = 1.0) -> None:
    """Fail fast when a remote libvirt URI's host does not accept TCP (libvirt blocks ~39 s)."""
    parsed = urllib.parse.urlsplit(uri)
    if not parsed.hostname:
        return
    transport = parsed.scheme.partition("+")[2] or "tls"
    port = parsed.port or _DEFAULT_PORTS.get(transport)
    if port is None:
        return
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        raise AgentError(
            "destination_unreachable", f"{parsed.hostname}:{port} does not answer: {exc}"
        ) from exc


def _libvirt_failure(exc: libvirt.libvirtError) -> AgentError:
    code = exc.get_error_code()
    if code in (libvirt.VIR_ERR_NO_DOMAIN,):
        return AgentError("not_found", str(exc))
    return AgentError("libvirt_error", str(exc), exit_code=code)


class LibvirtHypervisor:
    """The real hypervisor driver over one libvirt connection (reopened when lost)."""

    def __init__(
        self,
        uri: str,
        on_event: Callable[[LifecycleEvent], None],
        *,
        backoff_max_s: float = 30.0,
        on_watchdog: Callable[[str, str], None] | None = None,
        memory_mib: int | None = None,
    ) -> None:
        """`memory_mib`: report this much memory instead of the machine's (*simulated*: the
        lab's hosts share one machine), free = that minus the active guests' memory."""
        start_event_loop()
        self.uri = uri
        self._memory_mib = memory_mib
        self._on_event = on_event
        self._on_watchdog = on_watchdog
        self._lock = threading.Lock()
        self._conn: Any = None
        self._backoff_s = 0.0
        self._backoff_max_s = backoff_max_s
        self._next_attempt = 0.0
        self._static: HostFacts | None = None

    # connection -------------------------------------------------------------------------
    def connected(self) -> bool:
        try:
            self._connection()
        except AgentError:
            return False
        return True

    def _connection(self) -> Any:
        with self._lock:
            if self._conn is not None:
                return self._conn
            now = time.monotonic()
            if now < self._next_attempt:
                raise AgentError("libvirt_unavailable", f"{self.uri}: reconnecting (backoff)")
            try:
                self._conn = self._open()
            except (libvirt.libvirtError, AgentError) as exc:
                self._backoff_s = min(max(self._backoff_s * 2, 0.5), self._backoff_max_s)
                self._next_attempt = now + self._backoff_s
                log.warning(
                    "libvirt %s unavailable (%s); retry in %.1f s", self.uri, exc, self._backoff_s
                )
                raise AgentError("libvirt_unavailable", f"{self.uri}: {exc}") from exc
            self._backoff_s = 0.0
            log.info("connected to libvirt %s", self.uri)
            if os.environ.get(TRACE_ENV):
                with contextlib.suppress(libvirt.libvirtError):
                    active = self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                    trace("connect", guests=sorted(d.name() for d in active))
            return self._conn

    def _open(self) -> Any:
        probe_tcp(self.uri)
        conn = libvirt.open(self.uri)
        with contextlib.suppress(libvirt.libvirtError):  # local and test drivers: no keepalive
            conn.setKeepAlive(1, 3)
        conn.registerCloseCallback(self._closed, None)
        conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None
        )
        conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG, self._watchdog, None
        )
        return conn

    def _closed(self, conn: Any, reason: int, _opaque: object) -> None:
        log.warning("libvirt connection %s closed (reason %d); will reconnect", self.uri, reason)
        # No lock here: this runs on the event thread, which _open() may be waiting for.
        if self._conn is conn:
            self._conn = None

    def _lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: object) -> None:
        state, detail_name = lifecycle_state(event, detail)
        try:
            trace("lifecycle", dom.name(), state=state, detail=detail_name)
            self._on_event(LifecycleEvent(dom.name(), dom.UUIDString(), state, detail_name))
        except Exception:  # an event callback must never kill libvirt's event thread
            log.exception("lifecycle event handler failed")

    def _watchdog(self, _conn: Any, dom: Any, action: int, _opaque: object) -> None:
        name = WATCHDOG_ACTIONS.get(action, str(action))
        try:
            trace("watchdog", dom.name(), action=name)
            log.warning("watchdog of %s fired (action %s)", dom.name(), name)
            if self._on_watchdog is not None:
                self._on_watchdog(dom.name(), name)
        except Exception:  # an event callback must never kill libvirt's event thread
            log.exception("watchdog event handler failed")

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def _domain(self, name: str) -> Any:
        try:
            return self._connection().lookupByName(names.guest(name))
        except libvirt.libvirtError as exc:
            raise _libvirt_failure(exc) from exc

    # guests -----------------------------------------------------------------------------
    @staticmethod
    def _state(dom: Any) -> GuestState:
        code = dom.state()[0]
        return GuestState(dom.name(), dom.UUIDString(), STATE_NAMES.get(code, str(code)))

    def define(self, xml: str) -> GuestState:
        """Define (or redefine) the guest. A definition of the same name with another UUID
        that does not run is a leftover of an earlier guest of that name (left on a host that
        was down when its guest failed over, or of a service deleted and made anew): it is
        undefined first, its disks untouched. One that runs is libvirt's to refuse."""
        name = guest_name_from_xml(xml)
        uuid = _uuid_from_xml(xml)
        conn = self._connection()
        try:
            if uuid:
                self._drop_leftover(conn, name, uuid)
            return self._state(conn.defineXML(xml))
        except libvirt.libvirtError as exc:
            raise _libvirt_failure(exc) from exc

    @staticmethod
    def _drop_leftover(conn: Any, name: str, uuid: str) -> None:
        try:
            old = conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
            raise
        if old.UUIDString().lower() == uuid.lower() or old.isActive():
            return
        log.warning(
            "%s: undefining a leftover definition of that name (uuid %s, not running) for the "
            "guest's own (uuid %s); its disks are kept",
            name,
            old.UUIDString(),
            uuid,
        )
        flags = (
            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        )
        try:  # a UEFI guest's NVRAM file is kept too (QEMU refuses to undefine it otherwise)
            old.undefineFlags(flags | libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:  # a driver without NVRAM
                raise
            old.undefineFlags(flags)

    def start(self, name: str, resume: bool = False) -> tuple[GuestState, bool, bool]:
        """Start the guest -> (state, changed, resumed). With `resume`, libvirt resumes its
        managed-save image if it has one; without, such an image is removed first (it may be
        older than the guest's disks) and the guest boots afresh."""
        dom = self._domain(name)
        try:
            if dom.isActive():
                return self._state(dom), False, False
            saved = bool(dom.hasManagedSaveImage(0))
            if saved and not resume:
                log.info("%s: dropping its managed-save image for a fresh boot", name)
                dom.managedSaveRemove(0)
            began = time.time()
            dom.create()
            trace("start", name, began, resumed=saved and resume)
            return self._state(dom), True, saved and resume
        except libvirt.libvirtError as exc:
            raise _libvirt_failure(exc) from exc

    def managed_save(self, name: str) -> GuestState:
        """Save the running guest's state to the host's disk and stop it
        (virDomainManagedSave); its next create() resumes from there."""
        dom = self._domain(name)
        try:
            dom.managedSave(0)
        except libvirt.libvirtError as exc:
            raise _libvirt_failure(exc) from exc
        trace("save", name)
        return self._state(dom)

    # health checks (agent/health.py) --------------------------------------------------
    def active_guests(self) -> list[str]:
        return [g.name for g in self.list_guests(active_only=True)]

    def health_spec(self, name: str) -> HealthSpec | None:
        """The guest's health checks, from the metadata of its running definition."""
        dom = self._domain(name)
        try:
            xml: str = dom.XMLDesc(0)
        except libvirt.libvirtError as exc:
            raise _libvirt_failure(exc) from exc
        try:
            return HealthSpec.from_domain_xml(xml)
        except ProtocolError as exc:
            raise AgentError("bad_request", f"{name}: {exc.message}") from exc

    def guest_ping(self, name: str, timeout_s: float) -> str | None:
        """None if the guest's qemu-guest-agent answers `guest-ping` in time, else why not."""
        try:
            dom = self._domain(name)
            libvirt_qemu.qemuAgentCommand(
                dom, '{"execute": "guest-ping"}', max(1, round(timeout_s)), 0
            )
        except AgentError as exc:
            return exc.message
        except libvirt.libvirtError as exc:
            return f"guest-ping: {exc.get_error_message() or exc}"
        return None

    def shutdown(self, name: str, timeout_s: float) -> tuple[GuestState, str]:
        dom = self._domain(name)
        try:
            if not dom.isActive():
                return self._state(dom), "already_off"
            uuid = dom.UUIDString()
            dom.shutdown()
        except libvirt.libvirtError as exc:
            raise _libvirt_failure(exc) from exc
        try:
            return self._wait_off(dom, name, timeout_s)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:  # a transient guest: gone
                trace("shutdown", name)
                return GuestState(name, uuid, "shutoff"), "shutdown"
            raise _libvirt_failure(exc) from exc

    def _wait_off(self, dom: Any, name: str, timeout_s: float) -> tuple[GuestState, str]:
        """Wait for a shutdown to finish; destroy the guest after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not dom.isActive():
                trace("shutdown", name)
                return self._state(dom), "shutdown"
            time.sleep(0.1)
        if dom.isActive():
            dom.destroy()
            trace("destroy", name)
            return self._state(dom), "destroyed"
        trace("shutdown", name)
        return self._state(dom), "shutdown"

    def destroy(self, name: str) -> tuple[GuestState, bool]:
        dom = self._domain(name)
        try:
            if not dom.isActive():
                return self._state(dom), False
            dom.destroy()
            trace("destroy", name)
            return self._state(dom), True
        except libvirt.libvirtError as exc:
            raise _libvirt_failure(exc) from exc

    def undefine(self, name: str) -> bool:
        try:
            dom = self._domain(name)
        except AgentError as exc:
            if exc.code == "not_found":
                return False
            raise
        try:
            dom.undefine()
        except libvirt.libvirtError as exc:
            raise _libvirt_failure(exc) from exc
        return True

    def migrate(
        self, name: str, dest_uri: str, migrate_uri: str | None, timeout_s: float | None
    ) -> MigrationStats:
        dom = self._domain(name)
        names.libvirt_uri(dest_uri)
        params: dict[str, Any] = {}
        if migrate_uri:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = names.migration_uri(migrate_uri)
        probe_tcp(dest_uri)
        timer = threading.Timer(timeout_s, self._abort, args=(dom,)) if timeout_s else None
        start = time.monotonic()
        try:
            if timer:
                timer.start()
            dom.migrateToURI3(dest_uri, params, migrate_flags(dest_uri, migrate_uri))
            trace("migrate-out", name, dest=dest_uri)
        except libvirt.libvirtError as exc:
            raise _libvirt_failure(exc) from exc
        finally:
            if timer:
                timer.cancel()
        duration = time.monotonic() - start
        return MigrationStats(name, dest_uri, duration, self._downtime_ms(dest_uri, name))

    @staticmethod
    def _abort(dom: Any) -> None:
        log.warning("migration of %s timed out; aborting the job", dom.name())
        try:
            dom.abortJob()
        except libvirt.libvirtError as exc:
            log.warning("abortJob failed: %s", exc)

    @staticmethod
    def _downtime_ms(dest_uri: str, name: str) -> int | None:
        """Downtime of the completed migration, as the destination recorded it."""
        try:
            conn = libvirt.open(dest_uri)
        except libvirt.libvirtError as exc:
            log.warning("cannot read migration stats from %s: %s", dest_uri, exc)
            return None
        try:
            stats = conn.lookupByName(name).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            downtime = stats.get("downtime")
            return int(downtime) if downtime is not None else None
        except libvirt.libvirtError as exc:
            log.warning("no completed job stats for %s on %s: %s", name, dest_uri, exc)
            return None
        finally:
            conn.close()

    def dumpxml(self, name: str) -> str:
        """The guest's persistent definition (what `virsh dumpxml --inactive` prints)."""
        dom = self._domain(name)
        try:
            xml: str = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        except libvirt.libvirtError as exc:
            raise _libvirt_failure(exc) from exc
        return xml

    def list_guests(self, active_only: bool = False) -> list[GuestState]:
        flags = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE if active_only else 0
        try:
            doms = self._connection().listAllDomains(flags)
            return sorted((self._state(d) for d in doms), key=lambda g: g.name)
        except libvirt.libvirtError as exc:
            raise _libvirt_failure(exc) from exc

    def host_facts(self) -> HostFacts:
        conn = self._connection()
        try:
            if self._static is None:
                self._static = self._static_facts(conn)
            if self._memory_mib is not None:
                active = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                used = sum(d.info()[1] for d in active) // 1024
                return HostFacts(
                    **{
                        **self._static.__dict__,
                        "memory_total_mib": self._memory_mib,
                        "memory_free_mib": max(0, self._memory_mib - used),
                    }
                )
            free = conn.getFreeMemory() // (1024 * 1024)
        except libvirt.libvirtError as exc:
            raise _libvirt_failure(exc) from exc
        return HostFacts(**{**self._static.__dict__, "memory_free_mib": int(free)})

    @staticmethod
    def _static_facts(conn: Any) -> HostFacts:
        caps = ET.fromstring(conn.getCapabilities())
        host_uuid = (caps.findtext("host/uuid") or "").strip() or None
        info = conn.getInfo()
        return HostFacts(
            host_uuid=host_uuid,
            hostname=conn.getHostname(),
            cpus=int(info[2]),
            memory_total_mib=int(info[1]),
            memory_free_mib=0,
            libvirt_version=version_string(conn.getLibVersion()),
            hypervisor=conn.getType(),
            hypervisor_version=version_string(conn.getVersion()),
        )
