"""Reading a scenario file (../shared/scenarios/FORMAT.md) into checked, typed values.

Anything wrong raises `ScenarioError` naming the field, e.g. `services[0].memory_mb`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from console.engine.model import Domain, DomainMember, HealthCheck, ServiceConfig
from console.engine.settings import Settings
from console.engine.states import Desired, Recovery, ServiceState


class ScenarioError(ValueError):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


@dataclass(frozen=True, slots=True)
class SimSettings:
    """How long the simulated hosts take; not engine settings."""

    tick_s: float = 1.0
    start_s: float = 1.0
    stop_s: float = 1.0
    migrate_s: float = 2.0
    fence_s: float = 1.0
    #: a shutting-down host waits this long for its guests to leave, then stops them
    shutdown_timeout_s: float = 120.0


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    memory_mb: int
    cpus: int
    power: bool = True
    fence: str = "ok"  # ok | fails | none
    #: vCPUs per CPU on this node (None: the settings' cpu_overcommit)
    cpu_overcommit: float | None = None
    shared_storage: bool = False
    #: the shared file systems mounted there for the whole run (None: not said)
    mounted: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Event:
    t: float
    do: str
    node: str | None = None
    service: str | None = None
    count: int | None = None
    #: console_lag: how far behind the console's view is, in seconds
    s: float | None = None
    #: console_lag, console_restart: for how long, in seconds
    duration: float | None = None
    #: hang, crash: the health check the guest's host reports failed (a `HealthCheck` value)
    check: str | None = None


@dataclass(frozen=True, slots=True)
class Within:
    start: str
    end: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Expect:
    final: Mapping[str, tuple[str, str | None]] = field(default_factory=dict)
    fenced: tuple[str, ...] | None = None
    not_fenced: tuple[str, ...] = ()
    order: tuple[tuple[str, str], ...] = ()
    absent: tuple[str, ...] = ()
    within: tuple[Within, ...] = ()


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    settings: Settings
    sim: SimSettings
    nodes: tuple[NodeSpec, ...]
    domains: Mapping[str, Domain]
    services: Mapping[str, ServiceConfig]
    events: tuple[Event, ...]
    until: float
    expect: Expect
    #: the cluster's shared file systems (`Snapshot.shared_mounts`)
    shared_mounts: frozenset[str] = frozenset()


#: event -> (needs node, needs service, node optional, count allowed)
EVENTS: Mapping[str, tuple[str, ...]] = {
    "power_off": ("node",),
    "power_on": ("node",),
    "network_off": ("node",),
    "network_on": ("node",),
    "crash": ("service", "check?"),
    "fail_starts": ("service", "node?", "count?"),
    "fail_migrations": ("service", "count?"),
    "fail_fence": ("node", "count?"),
    "lose_results": ("service?", "node?", "count?"),
    "start": ("service",),
    "stop": ("service",),
    "enable": ("service",),
    "disable": ("service",),
    "migrate": ("service", "node"),
    "relocate": ("service", "node"),
    "maintenance_on": ("node",),
    "maintenance_off": ("node",),
    "shutdown": ("node",),
    # additions of this project, documented in console/engine/README.md
    "acknowledge": ("node",),
    "appear": ("service", "node"),
    "console_restart": ("node?", "for?"),
    "console_lag": ("s", "for", "node?"),
    "hang": ("service", "check", "count?"),
}

#: events that name a service or a node (exactly one of them)
SERVICE_OR_NODE = frozenset({"lose_results"})

#: FORMAT.md's final states, plus the engine's other states (e.g. "fence") for finer checks
FINAL_STATES = frozenset(s.value for s in ServiceState)


class _R:
    """A cursor into the JSON with the path of where it is, for error messages."""

    def __init__(self, value: Any, where: str) -> None:
        self.value = value
        self.where = where

    def fail(self, message: str) -> ScenarioError:
        return ScenarioError(self.where, message)

    def obj(self, allowed: set[str] | None = None) -> dict[str, Any]:
        if not isinstance(self.value, dict):
            raise self.fail("must be an object")
        if allowed is not None:
            for key in self.value:
                if key not in allowed:
                    where = f"{self.where}.{key}" if self.where else key
                    raise ScenarioError(where, "unknown field")
        return self.value

    def get(self, key: str) -> _R:
        return _R(self.obj().get(key), f"{self.where}.{key}" if self.where else key)

    def has(self, key: str) -> bool:
        return key in self.obj()

    def items(self) -> list[_R]:
        if not isinstance(self.value, list):
            raise self.fail("must be a list")
        return [_R(v, f"{self.where}[{i}]") for i, v in enumerate(self.value)]

    def string(self, default: str | None = None) -> str:
        if self.value is None and default is not None:
            return default
        if not isinstance(self.value, str) or not self.value:
            raise self.fail("must be a non-empty string")
        return self.value

    def boolean(self, default: bool) -> bool:
        if self.value is None:
            return default
        if not isinstance(self.value, bool):
            raise self.fail("must be true or false")
        return self.value

    def integer(self, default: int | None = None, minimum: int = 0) -> int:
        if self.value is None and default is not None:
            return default
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise self.fail("must be an integer")
        value: int = self.value
        if value < minimum:
            raise self.fail(f"must be at least {minimum}")
        return value

    def number(self, default: float | None = None, minimum: float = 0.0) -> float:
        if self.value is None and default is not None:
            return default
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            raise self.fail("must be a number")
        if not math.isfinite(self.value) or self.value < minimum:
            raise self.fail(f"must be a finite number, at least {minimum:g}")
        return float(self.value)

    def choice(self, options: set[str], default: str) -> str:
        if self.value is None:
            return default
        if self.value not in options:
            raise self.fail(f"must be one of {', '.join(sorted(options))}")
        return str(self.value)


def parse(raw: Any) -> Scenario:
    """Check a decoded scenario file and turn it into a Scenario."""
    top = _R(raw, "")
    top.obj(
        {
            "name",
            "description",
            "settings",
            "nodes",
            "domains",
            "services",
            "events",
            "until",
            "expect",
        }
    )
    settings, sim = _settings(top.get("settings"))
    nodes = _nodes(top.get("nodes"))
    names = {n.name for n in nodes}
    domains = _domains(top.get("domains"), names)
    services = _services(top.get("services"), names, domains)
    events = _events(top.get("events"), names, set(services))
    last = max((e.t for e in events), default=0.0)
    until = top.get("until").number(default=last + 60.0)
    expect = _expect(top.get("expect"), names, set(services))
    return Scenario(
        name=top.get("name").string(default="unnamed"),
        description=top.get("description").string(default=""),
        settings=settings,
        sim=sim,
        nodes=nodes,
        domains=domains,
        services=services,
        events=events,
        until=until,
        expect=expect,
    )


def _settings(r: _R) -> tuple[Settings, SimSettings]:
    if r.value is None:
        return Settings(), SimSettings()
    raw = r.obj()
    engine_fields = {f.name: f for f in dataclasses.fields(Settings)}
    sim_fields = {f.name: f for f in dataclasses.fields(SimSettings)}
    engine: dict[str, Any] = {}
    sim: dict[str, Any] = {}
    for key in raw:
        item = r.get(key)
        if key == "missed_heartbeats":
            engine[key] = item.integer(minimum=1)
        elif key in engine_fields and engine_fields[key].type in ("int", int):
            engine[key] = item.integer()
        elif key in engine_fields and engine_fields[key].type in ("bool", bool):
            engine[key] = item.boolean(False)
        elif key in engine_fields:
            engine[key] = item.number()
        elif key in sim_fields:
            sim[key] = item.number(minimum=0.001 if key == "tick_s" else 0.0)
        else:
            raise item.fail("unknown setting")
    if engine.get("heartbeat_interval_s", 1.0) <= 0:
        raise r.get("heartbeat_interval_s").fail("must be more than 0")
    return Settings(**engine), SimSettings(**sim)


def _nodes(r: _R) -> tuple[NodeSpec, ...]:
    out: list[NodeSpec] = []
    seen: set[str] = set()
    for item in r.items():
        item.obj(
            {"name", "memory_mb", "cpus", "power", "fence", "cpu_overcommit", "shared_storage"}
        )
        name = item.get("name").string()
        if name in seen:
            raise item.get("name").fail(f"duplicate node {name!r}")
        seen.add(name)
        out.append(
            NodeSpec(
                name=name,
                memory_mb=item.get("memory_mb").integer(minimum=1),
                cpus=item.get("cpus").integer(default=1, minimum=1),
                power=item.get("power").choice({"on", "off"}, "on") == "on",
                fence=item.get("fence").choice({"ok", "fails", "none"}, "ok"),
                cpu_overcommit=(
                    item.get("cpu_overcommit").number() if item.has("cpu_overcommit") else None
                ),
                shared_storage=item.get("shared_storage").boolean(default=False),
            )
        )
    if not out:
        raise r.fail("needs at least one node")
    return tuple(out)


def _domains(r: _R, nodes: set[str]) -> dict[str, Domain]:
    out: dict[str, Domain] = {}
    if r.value is None:
        return out
    for item in r.items():
        item.obj({"name", "ordered", "restricted", "nofailback", "members"})
        name = item.get("name").string()
        if name in out:
            raise item.get("name").fail(f"duplicate domain {name!r}")
        members: list[DomainMember] = []
        for m in item.get("members").items():
            m.obj({"node", "priority"})
            node = m.get("node").string()
            if node not in nodes:
                raise m.get("node").fail(f"unknown node {node!r}")
            priority = m.get("priority").integer(default=1, minimum=1)
            if priority > 100:
                raise m.get("priority").fail("must be 1..100")
            members.append(DomainMember(node, priority))
        out[name] = Domain(
            name=name,
            members=tuple(members),
            ordered=item.get("ordered").boolean(False),
            restricted=item.get("restricted").boolean(False),
            nofailback=item.get("nofailback").boolean(False),
        )
    return out


def _services(r: _R, nodes: set[str], domains: Mapping[str, Domain]) -> dict[str, ServiceConfig]:
    out: dict[str, ServiceConfig] = {}
    for item in r.items():
        item.obj(
            {
                "name",
                "node",
                "desired",
                "domain",
                "recovery",
                "max_restarts",
                "restart_window_s",
                "max_relocations",
                "memory_mb",
                "cpus",
                "priority",
                "migratable",
                "autostart",
                "saveable",
                "protected",
            }
        )
        name = item.get("name").string()
        if name in out:
            raise item.get("name").fail(f"duplicate service {name!r}")
        node: str | None = None
        if item.get("node").value is not None:
            node = item.get("node").string()
            if node not in nodes:
                raise item.get("node").fail(f"unknown node {node!r}")
        domain: str | None = None
        if item.get("domain").value is not None:
            domain = item.get("domain").string()
            if domain not in domains:
                raise item.get("domain").fail(f"unknown domain {domain!r}")
        desired = Desired(item.get("desired").choice({d.value for d in Desired}, "started"))
        out[name] = ServiceConfig(
            name=name,
            desired=desired,
            domain=domain,
            recovery=Recovery(item.get("recovery").choice({x.value for x in Recovery}, "restart")),
            max_restarts=item.get("max_restarts").integer(default=0),
            restart_window_s=item.get("restart_window_s").number(default=0.0),
            max_relocations=item.get("max_relocations").integer(default=1),
            memory_mb=item.get("memory_mb").integer(default=512),
            cpus=item.get("cpus").integer(default=1),
            priority=item.get("priority").integer(default=0, minimum=-(2**31)),
            migratable=item.get("migratable").boolean(True),
            autostart=item.get("autostart").boolean(True),
            saveable=item.get("saveable").boolean(False),
            protected=item.get("protected").boolean(True),
            node=node,
        )
    return out


def _events(r: _R, nodes: set[str], services: set[str]) -> tuple[Event, ...]:
    out: list[Event] = []
    if r.value is None:
        return ()
    for item in r.items():
        raw = item.obj({"t", "do", "node", "service", "count", "s", "for", "check"})
        do = item.get("do").choice(set(EVENTS), "")
        if not do:
            raise item.get("do").fail("is required")
        spec = EVENTS[do]
        fields = {f.rstrip("?"): f.endswith("?") for f in spec}
        for key in ("node", "service", "count", "s", "for", "check"):
            if key in raw and key not in fields:
                raise item.get(key).fail(f"not a field of {do!r}")
            if key not in raw and key in fields and not fields[key]:
                raise item.get(key).fail(f"is required by {do!r}")
        if do in SERVICE_OR_NODE and ("node" in raw) == ("service" in raw):
            raise item.fail(f"{do!r} needs exactly one of service and node")
        node = item.get("node").string() if "node" in raw else None
        if node is not None and node not in nodes:
            raise item.get("node").fail(f"unknown node {node!r}")
        service = item.get("service").string() if "service" in raw else None
        if service is not None and service not in services:
            raise item.get("service").fail(f"unknown service {service!r}")
        count = item.get("count").integer(minimum=1) if "count" in raw else None
        lag = item.get("s").number() if "s" in raw else None
        duration = item.get("for").number() if "for" in raw else None
        check = None
        if "check" in raw:
            check = item.get("check").choice({c.value for c in HealthCheck}, "")
        out.append(Event(item.get("t").number(), do, node, service, count, lag, duration, check))
    return tuple(sorted(out, key=lambda e: e.t))


def _labels(r: _R) -> tuple[str, ...]:
    if r.value is None:
        return ()
    return tuple(i.string() for i in r.items())


def _expect(r: _R, nodes: set[str], services: set[str]) -> Expect:
    if r.value is None:
        return Expect()
    r.obj({"final", "fenced", "not_fenced", "order", "absent", "within"})
    final: dict[str, tuple[str, str | None]] = {}
    fr = r.get("final")
    if fr.value is not None:
        for name in fr.obj():
            item = fr.get(name)
            if name not in services:
                raise item.fail(f"unknown service {name!r}")
            item.obj({"state", "node"})
            state = item.get("state").choice(set(FINAL_STATES), "")
            if not state:
                raise item.get("state").fail("is required")
            node = item.get("node").string() if item.has("node") else None
            if node is not None and node not in nodes:
                raise item.get("node").fail(f"unknown node {node!r}")
            final[name] = (state, node)
    for key in ("fenced", "not_fenced"):
        for i in r.get(key).items() if r.get(key).value is not None else []:
            if i.string() not in nodes:
                raise i.fail(f"unknown node {i.value!r}")
    order: list[tuple[str, str]] = []
    if r.get("order").value is not None:
        for pair in r.get("order").items():
            labels = pair.items()
            if len(labels) != 2:
                raise pair.fail("must be a pair [A, B]")
            order.append((labels[0].string(), labels[1].string()))
    within: list[Within] = []
    if r.get("within").value is not None:
        for w in r.get("within").items():
            w.obj({"from", "to", "s"})
            within.append(Within(w.get("from").string(), w.get("to").string(), w.get("s").number()))
    fenced = _labels(r.get("fenced")) if r.get("fenced").value is not None else None
    return Expect(
        final=final,
        fenced=fenced,
        not_fenced=_labels(r.get("not_fenced")),
        order=tuple(order),
        absent=_labels(r.get("absent")),
        within=tuple(within),
    )
