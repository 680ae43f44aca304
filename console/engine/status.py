"""The engine's memory between ticks: one Status, stored by the runtime as one JSON column.

The runtime treats it as opaque except for reading `services[name].state/node/desired/reason`
and `hosts[name].state/reason` and `alarm` to show them.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, Generic, TypeVar, cast

from console.engine.commands import Command, CommandKind
from console.engine.states import Desired, HostState, ServiceState

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class HostStatus:
    state: HostState
    #: when it entered `state`
    since: float = 0.0
    #: why it is in this state (shown to people)
    reason: str = ""
    #: it has heartbeated at least once
    heard: bool = False
    #: it went quiet after announcing a clean shutdown: known down, not silent
    shut_down: bool = False
    #: fence attempts that failed in a row
    fence_failures: int = 0
    #: no fence attempt before this time
    next_fence_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    state: ServiceState
    desired: Desired
    #: where it runs (started, stopping, migrating: the source), is starting, or last ran
    node: str | None = None
    #: destination of an in-flight migrate/relocate
    target: str | None = None
    #: id of the in-flight action
    action: str | None = None
    since: float = 0.0
    reason: str = ""
    #: times of restarts in place still inside the restart window
    restarts: tuple[float, ...] = ()
    #: hosts it failed on in a row (for max_relocations)
    failed_nodes: tuple[str, ...] = ()
    #: hosts that may still run it without the engine knowing: in FENCE, the hosts involved
    #: when one went silent (silent ones to be fenced, reporting ones to report); in
    #: RECOVERING, hosts whose next report must be seen before it starts again; in other
    #: states, silent hosts not fenced yet that may still run a copy
    suspects: tuple[str, ...] = ()
    #: RECOVERING: restart in place on this host if it can
    restart_on: str | None = None
    #: host it was drained from (maintenance, clean shutdown): it returns there afterwards
    home: str | None = None
    #: no new move (stop, migration) before this time, after a failed one
    retry_at: float = 0.0
    #: a person's command waiting for the service to settle
    queued: Command | None = None
    #: when the in-flight action's result was given up on (its timeout passed): the result is
    #: unknown, and the reports of the hosts involved decide what became of it
    lost_at: float | None = None
    #: the host where it last ran (entered `started`)
    last_node: str | None = None
    #: a person started or enabled it: its last host wins if it is in the best tier with room
    prefer: str | None = None
    #: a failback or a return home is under way or owed: a failed one is tried again after
    #: `retry_at` (a host that just came back may not take a migration yet)
    failback: bool = False
    #: STOPPING a guest that failed a health check (destroyed, then its recovery policy):
    #: the check (a `HealthCheck` value) and the reason given to the recovery policy
    hung: str = ""
    hung_reason: str = ""
    #: its state was saved on this host (managed save) when it was stopped to make room; its
    #: next start there resumes it
    saved_on: str | None = None
    #: when the live rebalancer (or a person) last moved it: the rebalancer moves it again
    #: only after its cool-down
    rebalanced_at: float | None = None
    #: no host of the cluster reported while it should run (a full power loss, or the console
    #: cut off from every host): with autostart off, the cluster does not start it again on
    #: its own (it stays stopped until a person starts it); cleared once it runs or stops
    outage: bool = False


class PendingKind(StrEnum):
    """What an action in flight is for."""

    FENCE = "fence"
    FENCE_STATUS = "fence-status"  # a power-status query after a fence's result was lost
    START = "start"
    STOP = "stop"
    MIGRATE = "migrate"
    RELOCATE = "relocate"
    STRAY = "stray"  # a stop of a copy running where it should not


@dataclass(frozen=True, slots=True)
class Pending:
    """An action in flight, so that its result can be matched."""

    kind: PendingKind
    subject: str  # host name for fence, else service name
    host: str
    deadline: float


def _is_active(s: ServiceStatus) -> bool:
    """True when the service needs looking at every tick (not settled)."""
    if s.queued is not None:
        return True
    state = s.state
    if state is ServiceState.STARTED:
        return s.desired is not Desired.STARTED
    if state is ServiceState.STOPPED or state is ServiceState.DISABLED:
        return s.desired is Desired.STARTED or (
            (state is ServiceState.STOPPED) != (s.desired is Desired.STOPPED)
        )
    return state is not ServiceState.FAILED


@dataclass(frozen=True, slots=True)
class Status:
    hosts: Mapping[str, HostStatus] = field(default_factory=dict)
    services: Mapping[str, ServiceStatus] = field(default_factory=dict)
    pending: Mapping[str, Pending] = field(default_factory=dict)
    #: counter behind new action ids
    next_id: int = 0
    #: an alarm for people (e.g. a fencing storm); empty when all is well
    alarm: str = ""
    #: a fencing storm was on at the previous tick
    storm: bool = False
    #: no host is fenced before this time (a fencing storm cleared a moment ago)
    fence_hold_until: float = 0.0
    #: since when the hosts' memory-use spread has been above the rebalancer's threshold
    #: (None: it is not, or the rebalancer is off or paused)
    rebalance_since: float | None = None
    #: services that are not settled (derived; rebuilt from `services` when None)
    active: frozenset[str] | None = None

    def active_services(self) -> frozenset[str]:
        if self.active is not None:
            return self.active
        return frozenset(n for n, s in self.services.items() if _is_active(s))

    # --- JSON ---------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": 1,
                "next_id": self.next_id,
                "alarm": self.alarm,
                "fence_hold_until": self.fence_hold_until,
                "storm": self.storm,
                "rebalance_since": self.rebalance_since,
                "hosts": {n: _host_out(h) for n, h in sorted(self.hosts.items())},
                "services": {n: _svc_out(s) for n, s in sorted(self.services.items())},
                "pending": {
                    k: [p.kind, p.subject, p.host, p.deadline]
                    for k, p in sorted(self.pending.items())
                },
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Status:
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("version") != 1:
            raise ValueError("not an engine status (version 1)")
        services = {n: _svc_in(v) for n, v in raw["services"].items()}
        return cls(
            hosts={n: _host_in(v) for n, v in raw["hosts"].items()},
            services=services,
            pending={
                k: Pending(PendingKind(v[0]), str(v[1]), str(v[2]), float(v[3]))
                for k, v in raw["pending"].items()
            },
            next_id=int(raw["next_id"]),
            alarm=str(raw["alarm"]),
            fence_hold_until=float(raw.get("fence_hold_until", 0.0)),
            storm=bool(raw.get("storm", False)),
            rebalance_since=None
            if raw.get("rebalance_since") is None
            else float(raw["rebalance_since"]),
            active=frozenset(n for n, s in services.items() if _is_active(s)),
        )


def service_to_json(s: ServiceStatus) -> str:
    """One service's status alone (the console stores the status in pieces)."""
    return json.dumps(_svc_out(s), sort_keys=True, separators=(",", ":"))


def service_from_json(text: str) -> ServiceStatus:
    return _svc_in(json.loads(text))


def assemble(header: Status, services: Mapping[str, ServiceStatus]) -> Status:
    """`header` (a status stored without its services) with `services` put back."""
    return replace(
        header,
        services=services,
        active=frozenset(n for n, s in services.items() if _is_active(s)),
    )


class _Record(Generic[R]):
    """One frozen dataclass as a JSON object, field by field, read back by its type hints
    (JSON keeps no tuples, enums or commands). A field missing from what is read takes its
    default (a status stored before the field was added); one with no default must be there."""

    def __init__(self, cls: type[R]) -> None:
        hints, record = typing.get_type_hints(cls), fields(cast(Any, cls))
        self.cls = cls
        self.names = [f.name for f in record]
        #: per field, in order: its name, how it is read, and its default (or MISSING)
        self.plan = [(f.name, _reader(hints[f.name]), f.default) for f in record]
        assert all(f.default_factory is MISSING for f in record), "no default factories"
        self.writers = {n: w for n in self.names if (w := _writer(hints[n])) is not None}

    def dump(self, obj: R) -> dict[str, Any]:
        out = {name: getattr(obj, name) for name in self.names}
        for name, write in self.writers.items():
            out[name] = write(out[name])
        return out

    def load(self, v: Mapping[str, Any]) -> R:
        get = v.get
        args = []
        for name, read, default in self.plan:
            x = get(name, MISSING)
            if x is not MISSING:
                args.append(read(x))
            elif default is not MISSING:
                args.append(default)
            else:
                raise ValueError(f"a stored {self.cls.__name__} without {name}")
        return self.cls(*args)


def _command_out(q: Command | None) -> list[Any] | None:
    return None if q is None else [q.id, q.kind.value, q.service, q.node]


def _command_in(q: Any) -> Command | None:
    if q is None:
        return None
    return Command(id=str(q[0]), kind=CommandKind(q[1]), service=str(q[2]), node=_opt(q[3]))


def _opt(v: Any) -> str | None:
    return None if v is None else str(v)


def _reader(t: Any) -> Callable[[Any], Any]:
    if t == Command | None:
        return _command_in
    if typing.get_origin(t) is types.UnionType:  # X | None
        (inner,) = (a for a in typing.get_args(t) if a is not type(None))
        read = _reader(inner)
        return lambda v: None if v is None else read(v)
    if typing.get_origin(t) is tuple:  # tuple[X, ...]
        item = _reader(typing.get_args(t)[0])
        return lambda v: tuple(item(x) for x in v)
    assert t in (str, float, int, bool) or issubclass(t, StrEnum), t
    return cast(Callable[[Any], Any], t)


def _writer(t: Any) -> Callable[[Any], Any] | None:
    """None: the value is written as it is (tuples become lists, a StrEnum its value)."""
    return _command_out if t == Command | None else None


_HOST = _Record(HostStatus)
_SERVICE = _Record(ServiceStatus)
_host_out, _host_in = _HOST.dump, _HOST.load
_svc_out, _svc_in = _SERVICE.dump, _SERVICE.load
