"""What goes into `tick` (the snapshot) and what comes out (actions, replies, the decision).

All of it is frozen dataclasses: the runtime fills them from the database, the simulator from
its simulated hosts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from console.engine.commands import Command
from console.engine.settings import Settings
from console.engine.states import Desired, HostState, Recovery, ServiceState
from console.engine.status import Status

__all__ = [
    "HEALTH_LABELS",
    "Action",
    "ActionResult",
    "Decision",
    "Domain",
    "DomainMember",
    "Fence",
    "FenceStatus",
    "HealthCheck",
    "HealthFailure",
    "HostObservation",
    "MadeRoom",
    "Migrate",
    "Refusal",
    "RefusalCode",
    "Relocate",
    "Reply",
    "ReplyOutcome",
    "ServiceConfig",
    "Snapshot",
    "Start",
    "Stop",
    "StopReason",
    "Subject",
    "Transition",
]

# --- inputs -------------------------------------------------------------------------------


class HealthCheck(StrEnum):
    """A per-service health check beyond "QEMU is alive"; a failure counts as a crash."""

    WATCHDOG = "watchdog"  # the guest's watchdog device fired (libvirt's watchdog event)
    PANIC = "panic"  # the guest OS panicked (pvpanic: libvirt's guest-panicked event)
    GUEST_AGENT = "guest-agent"  # qemu-guest-agent missed `guest-ping` M times in a row
    PROBE = "probe"  # the application probe (TCP connect, HTTP GET) failed M times in a row


#: how each check's failure reads in reasons and the event log
HEALTH_LABELS: Mapping[HealthCheck, str] = {
    HealthCheck.WATCHDOG: "watchdog fired",
    HealthCheck.PANIC: "guest panicked",
    HealthCheck.GUEST_AGENT: "guest agent not answering",
    HealthCheck.PROBE: "application probe failing",
}


@dataclass(frozen=True, slots=True)
class HealthFailure:
    """A host's report that one of its guests failed a health check (the guest may still be
    running: QEMU alive, the guest or its application dead)."""

    check: HealthCheck
    #: the agent's words, e.g. "watchdog action none" or "tcp 10.0.0.5:80: refused (3/3)"
    detail: str = ""

    def describe(self) -> str:
        label = HEALTH_LABELS[self.check]
        return f"{label} ({self.detail})" if self.detail else label


@dataclass(frozen=True, slots=True)
class HostObservation:
    """What the console knows about one host right now."""

    name: str
    #: time of the last heartbeat (same clock as `now`); None = never heard from
    last_heartbeat: float | None
    #: guests the host reported running in that heartbeat
    running: frozenset[str] = frozenset()
    memory_total_mb: int = 0
    #: free memory reported in that heartbeat; memory neither free nor used by known guests
    #: (the hypervisor's own) is kept out of placement
    memory_free_mb: int = 0
    cpus: int = 1
    #: this host's vCPUs per CPU (None: the cluster's `Settings.cpu_overcommit`; 0 = no limit)
    cpu_overcommit: float | None = None
    #: a person put the host in maintenance: drain it, place nothing new on it
    maintenance: bool = False
    #: the host announced a clean shutdown: drain it, and do not fence it once it goes quiet
    shutting_down: bool = False
    #: a fence device is configured for the host
    fence_device: bool = True
    #: the host is in the cluster's shared storage (dlm lockspaces of a clustered VG, GFS2):
    #: once silent it is fenced even with no guests, since dlm blocks the other hosts' file
    #: system until it is
    shared_storage: bool = False
    #: when a person acknowledged that the host is down; honoured only if later than the
    #: last heartbeat, so an old acknowledgement never covers a newer silence
    acknowledged_down_at: float | None = None
    #: guests of this host that failed a health check, as of the last report (a running guest
    #: here is hung: it is destroyed and recovered; a guest gone from `running` crashed, and
    #: this says why)
    unhealthy: Mapping[str, HealthFailure] = field(default_factory=lambda: MappingProxyType({}))
    #: the cluster's shared file systems (`Snapshot.shared_mounts`) mounted there, as of the
    #: last report; None: the host does not say (every one is taken as there)
    mounted: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class DomainMember:
    node: str
    #: 1..100, lower is more preferred (rgmanager's rule)
    priority: int = 1


@dataclass(frozen=True, slots=True)
class Domain:
    """A failover domain: the hosts a service prefers, in tiers."""

    name: str
    members: tuple[DomainMember, ...]
    #: members are tiered by priority; otherwise all members are one tier
    ordered: bool = False
    #: never run the service outside the members (it waits instead)
    restricted: bool = False
    #: never move a running service back to a better member
    nofailback: bool = False


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """A service's configuration, as stored by the console."""

    name: str
    #: what a person wants; read only when the engine first sees the service, afterwards the
    #: engine's status owns it (commands change it) and the runtime copies it back
    desired: Desired = Desired.STARTED
    domain: str | None = None
    recovery: Recovery = Recovery.RESTART
    #: restarts in place within restart_window_s before relocating; 0 = no limit
    max_restarts: int = 0
    #: 0 = restarts never expire
    restart_window_s: float = 0.0
    max_relocations: int = 1
    memory_mb: int = 512
    cpus: int = 1
    #: higher is more important
    priority: int = 0
    migratable: bool = True
    #: when the engine first sees a service that is not running, start it (else leave stopped)
    autostart: bool = True
    #: a guest stopped to make room is saved (libvirt managed save) instead of shut down, and
    #: resumed from that state on the same host when room returns; the runtime sets it when
    #: the guest's storage allows it
    saveable: bool = False
    #: counted by admission control: its start is refused when the cluster could not restart
    #: it after losing `Settings.host_failures_to_tolerate` hosts (False: opted out)
    protected: bool = True
    #: for a service the engine has not seen yet: where it runs now (adopted as started) when
    #: `desired` is started, else where it last ran (a person's start prefers it)
    node: str | None = None
    #: its disks (files and block devices): one under a shared file system's mount point can
    #: run only where that file system is mounted (`HostObservation.mounted`)
    disks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What became of an action; results for unknown or stale ids are ignored."""

    action_id: str
    ok: bool
    message: str = ""
    #: a Stop with `save`: the guest's state was saved (managed save), not shut down
    saved: bool = False


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything `tick` may look at."""

    hosts: Mapping[str, HostObservation]
    services: Mapping[str, ServiceConfig]
    domains: Mapping[str, Domain] = field(default_factory=lambda: MappingProxyType({}))
    #: results that arrived since the previous tick
    results: tuple[ActionResult, ...] = ()
    #: commands that arrived since the previous tick
    commands: tuple[Command, ...] = ()
    #: the status returned by the previous tick (Status() the very first time)
    status: Status = field(default_factory=Status)
    settings: Settings = field(default_factory=Settings)
    #: prefix of new action ids, e.g. to keep ids unique across a status reset
    id_prefix: str = "a"
    #: since when (same clock as `now`) the console's view of heartbeats has been continuous:
    #: set it when the view starts afresh (a new runner, a broker restart that emptied the
    #: heartbeat store). Until a full liveness window has passed since then, no host is
    #: declared silent and nobody is fenced. None: continuous for as long as it matters.
    view_since: float | None = None
    #: how far behind the console's ingestion of heartbeats is, in seconds; while it is more
    #: than `settings.max_ingest_lag_s`, no host is declared silent and nobody is fenced
    ingest_lag_s: float = 0.0
    #: mount points of the cluster's shared file systems (GFS2): a guest with a disk under one
    #: runs only on hosts that have it mounted
    shared_mounts: frozenset[str] = frozenset()


# --- outputs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fence:
    """Power the host off with its fence device; ok = it is off."""

    id: str
    host: str


@dataclass(frozen=True, slots=True)
class FenceStatus:
    """Ask the host's fence device for its power state (the result of a Fence was lost).

    ok=True means the device says the host is off (it counts as fenced); ok=False (on, or
    the query failed) means fence it again."""

    id: str
    host: str


@dataclass(frozen=True, slots=True)
class Start:
    id: str
    service: str
    host: str
    #: resume the state saved on this host (managed save); otherwise a fresh boot, and any
    #: saved state there is discarded first (it may be older than the guest's disks)
    resume: bool = False


class StopReason(StrEnum):
    """Why the engine stops a guest: says how (a clean shutdown, or destroyed at once)."""

    PERSON = "person"  # a person stopped or disabled it
    PREEMPT = "preempt"  # to make room for a more important guest; it waits afterwards
    STRAY = "stray"  # a copy running where it should not (a duplicate): destroyed at once
    HUNG = "hung"  # it failed a health check: destroyed at once, then the recovery policy


@dataclass(frozen=True, slots=True)
class Stop:
    id: str
    service: str
    host: str
    reason: StopReason = StopReason.PERSON
    #: save the guest's state (managed save) instead of shutting it down; falls back to a
    #: shutdown (the result says which: `ActionResult.saved`)
    save: bool = False

    @property
    def force(self) -> bool:
        """Destroy at once instead of a clean shutdown."""
        return self.reason in (StopReason.STRAY, StopReason.HUNG)


@dataclass(frozen=True, slots=True)
class Migrate:
    """Live migration; on failure the guest keeps running on `source`."""

    id: str
    service: str
    source: str
    target: str


@dataclass(frozen=True, slots=True)
class Relocate:
    """Stop on `source`, then start on `target` (for guests that cannot migrate)."""

    id: str
    service: str
    source: str
    target: str


Action = Fence | FenceStatus | Start | Stop | Migrate | Relocate


class ReplyOutcome(StrEnum):
    ACCEPTED = "accepted"  # applied now
    QUEUED = "queued"  # the service is busy; applied (and replied again) when it settles
    REFUSED = "refused"  # not applied; `code` and `reason` say why


class RefusalCode(StrEnum):
    """Why a person's command is refused (or queued: `busy`)."""

    UNKNOWN_SERVICE = "unknown-service"
    BUSY = "busy"
    FAILED = "failed"
    DISABLED = "disabled"
    RECOVERING = "recovering"
    NOT_RUNNING = "not-running"
    UNKNOWN_NODE = "unknown-node"
    SAME_NODE = "same-node"
    NOT_MIGRATABLE = "not-migratable"
    MAINTENANCE = "maintenance"
    OFFLINE = "offline"
    NOT_ALLOWED = "not-allowed"
    NO_ROOM = "no-room"
    #: a disk of the guest is on a shared file system not mounted on that host (yet)
    NO_STORAGE = "no-storage"
    #: admission control: the cluster could not restart its protected guests after a failure
    ADMISSION = "admission"


@dataclass(frozen=True, slots=True)
class Refusal:
    """The engine's answer to "may this happen?" when it may not: a code and a reason for
    people."""

    code: RefusalCode
    reason: str


@dataclass(frozen=True, slots=True)
class Reply:
    command_id: str
    service: str
    outcome: ReplyOutcome
    #: short machine-readable reason, a `RefusalCode` such as "not-migratable" (empty when
    #: accepted)
    code: str = ""
    reason: str = ""


class Subject(StrEnum):
    HOST = "host"
    SERVICE = "service"


@dataclass(frozen=True, slots=True)
class MadeRoom:
    """A guest stopped to make room for a more important one, as its transitions say it: the
    stop (`for_service` and both priorities, `save`: a managed save is asked), then its result
    (`saved`: saved, or shut down with `not_saved` saying why)."""

    host: str
    for_service: str = ""
    priority: int = 0  # the guest room is made for
    own_priority: int = 0  # the guest stopped
    save: bool = False
    #: None on the stop; on its result, whether the state was saved
    saved: bool | None = None
    not_saved: str = ""


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change; `old` is None when the engine first sees the host or service."""

    kind: Subject
    name: str
    old: HostState | ServiceState | None
    new: HostState | ServiceState
    reason: str
    #: what caused it when a person may want to filter by it: a `HealthCheck` value for a
    #: health failure ("watchdog", "panic", ...), "saved" for a guest saved to make room,
    #: "resume" for its start from that saved state
    cause: str = ""
    #: a guest stopped to make room: for whom, and (on the stop's result) saved or not, why
    room: MadeRoom | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    status: Status
    actions: tuple[Action, ...]
    log: tuple[str, ...]
    replies: tuple[Reply, ...] = ()
    transitions: tuple[Transition, ...] = ()
