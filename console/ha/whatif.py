""" "What if this host dies now?" — the engine's own simulator run on the live cluster.

The live snapshot (hosts, their memory and fence devices, domains, every service with where it
runs) becomes a scenario for ``console.engine.sim``: the real ``tick`` in virtual time, against
simulated hosts that take as long as this cluster's recent jobs took (median fence, start and
migration times). After a short warm-up the host loses power (or goes into maintenance); the
trace says where every guest goes, which waits and why, which is stopped to make room, and when
each runs again. Nothing is sent to any host: it is a simulation, and it says so.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db.models import F

from console import engine
from console.clusters.models import Cluster
from console.engine.sim.scenario import Event, Expect, NodeSpec, Scenario, SimSettings
from console.engine.sim.world import World
from console.engine.tick import OCCUPYING
from console.ha import rules
from console.ha.snapshot import load
from console.jobs.models import Job, JobStatus

WARM_UP_S = 10.0
HORIZON_S = 240.0
EVENTS = ("power_off", "maintenance")


class WhatIfError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass
class GuestFate:
    service: str
    before: str | None  # where it runs now
    after: str | None  # where it runs at the end of the simulation
    outcome: str  # stays | starts | restarts | migrates | waits | preempted | stopped
    seconds: float | None = None  # from the event until it runs again (moved guests)
    reason: str = ""


@dataclass
class Prediction:
    cluster: str
    host: str
    event: str
    guests: list[GuestFate] = field(default_factory=list)
    fenced: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def affected(self) -> list[GuestFate]:
        return [g for g in self.guests if g.outcome != "stays"]


def _median_seconds(cluster: Cluster, kind: str, default: float) -> float:
    rows = (
        Job.objects.filter(
            cluster=cluster,
            kind=kind,
            status=JobStatus.SUCCEEDED,
            started__isnull=False,
            finished__isnull=False,
        )
        .annotate(took=F("finished") - F("started"))
        .order_by("-finished")
        .values_list("took", flat=True)[:20]
    )
    values = [t.total_seconds() for t in rows if t is not None]
    return round(statistics.median(values), 3) if values else default


def _timings(cluster: Cluster) -> SimSettings:
    return SimSettings(
        start_s=_median_seconds(cluster, "start", 1.0),
        stop_s=_median_seconds(cluster, "stop", 1.0),
        migrate_s=_median_seconds(cluster, "migrate", 2.0),
        fence_s=_median_seconds(cluster, "fence", 3.0),
    )


def _capacity_mib(o: engine.HostObservation, services: Mapping[str, engine.ServiceConfig]) -> int:
    """The memory the engine counts the host as having for guests now (as `Tick.usage`: what
    it reports free plus what its known guests hold; hypervisor and other overhead excluded),
    so that the simulated host is no roomier than the live one."""
    if o.last_heartbeat is None:
        return o.memory_total_mb
    known = sum(services[g].memory_mb for g in o.running if g in services)
    return o.memory_total_mb - max(0, o.memory_total_mb - o.memory_free_mb - known)


def scenario(
    cluster: Cluster, host: str | None, event: str | None
) -> tuple[Scenario, dict[str, str | None], engine.Status]:
    """The live cluster as a scenario, with `event` on `host` after the warm-up (none when
    both are None), and the engine's live status on the scenario's clock."""
    loaded = load(cluster, rules.store(), rules._clock(), cached=True)
    snap = loaded.snapshot
    if host is not None and host not in snap.hosts:
        raise WhatIfError("host", f"There is no host {host!r} in cluster {cluster.name}.")
    if host is not None and event not in EVENTS:
        raise WhatIfError("event", f"{event!r} is not one of {', '.join(EVENTS)}.")
    live = {n: h.state for n, h in snap.status.hosts.items()}
    up = {engine.HostState.ONLINE, engine.HostState.MAINTENANCE}
    nodes = tuple(
        NodeSpec(
            name=o.name,
            memory_mb=_capacity_mib(o, snap.services) or 1,
            cpus=o.cpus or 1,
            power=live.get(o.name, engine.HostState.OFFLINE) in up or o.last_heartbeat is not None,
            fence="ok" if o.fence_device else "none",
            cpu_overcommit=o.cpu_overcommit,
            mounted=o.mounted,
        )
        for o in sorted(snap.hosts.values(), key=lambda o: o.name)
    )
    powered = {n.name for n in nodes if n.power}
    before: dict[str, str | None] = {}
    services: dict[str, engine.ServiceConfig] = {}
    for name, cfg in snap.services.items():
        status = snap.status.services.get(name)
        node = status.node if status and status.state in OCCUPYING else cfg.node
        node = node if node in powered else None
        desired = status.desired if status else cfg.desired
        if status and status.state is engine.ServiceState.FAILED:
            desired = engine.Desired.DISABLED  # a failed guest is not recovered by anyone
        before[name] = node if desired is engine.Desired.STARTED else None
        services[name] = dataclasses.replace(
            cfg, node=node if desired is engine.Desired.STARTED else None, desired=desired
        )
    events = [
        Event(0.0, "maintenance_on", node=o.name) for o in snap.hosts.values() if o.maintenance
    ]
    if host is not None:
        do = "power_off" if event == "power_off" else "maintenance_on"
        events.append(Event(WARM_UP_S, do, node=host))
    sc = Scenario(
        name=f"what-if {event} {host}" if host else "dry run",
        description="simulated on the live cluster",
        settings=snap.settings,
        sim=_timings(cluster),
        nodes=nodes,
        domains=dict(snap.domains),
        services=services,
        events=tuple(events),
        until=WARM_UP_S + HORIZON_S,
        expect=Expect(),
        shared_mounts=snap.shared_mounts,
    )
    return sc, before, shifted(snap.status, loaded.now)


BUSY_TO_STARTED = {
    engine.ServiceState.STARTING.value,
    engine.ServiceState.MIGRATING.value,
    engine.ServiceState.RELOCATING.value,
    engine.ServiceState.STOPPING.value,
}


def shifted(status: engine.Status, now: float) -> engine.Status:
    """The live status on the simulator's clock (now = 0), so the simulation starts from the
    engine's own memory (no host looks new, nothing fails back in the warm-up). Actions in
    flight are taken as done where they started (the simulator has no result for them)."""
    raw = json.loads(status.to_json())
    for h in raw["hosts"].values():
        h["since"] = min(0.0, float(h["since"]) - now)
        h["next_fence_at"] = max(0.0, float(h["next_fence_at"]) - now)
    for v in raw["services"].values():
        v["since"] = min(0.0, float(v["since"]) - now)
        v["retry_at"] = max(0.0, float(v["retry_at"]) - now)
        v["restarts"] = [min(0.0, float(t) - now) for t in v["restarts"]]
        if v.get("lost_at") is not None:
            v["lost_at"] = min(0.0, float(v["lost_at"]) - now)
        if v.get("rebalanced_at") is not None:  # the rebalancer's cool-down goes on
            v["rebalanced_at"] = min(0.0, float(v["rebalanced_at"]) - now)
        if v["state"] in BUSY_TO_STARTED:
            v["state"], v["action"], v["target"] = "started", None, None
    raw["pending"] = {}
    if raw.get("rebalance_since") is not None:
        raw["rebalance_since"] = min(0.0, float(raw["rebalance_since"]) - now)
    if raw.get("fence_hold_until"):
        raw["fence_hold_until"] = max(0.0, float(raw["fence_hold_until"]) - now)
    return engine.Status.from_json(json.dumps(raw))


@dataclass
class _Trace:
    """What a simulated run did after the warm-up, read from its trace."""

    at_event: dict[str, str | None]  # where each guest ran when the warm-up ended
    running_at: dict[str, tuple[float, str]] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)  # a Start was sent (after a fence, a crash)
    migrated: set[str] = field(default_factory=set)  # a live migration was sent
    stopped_for_room: set[str] = field(default_factory=set)
    fenced: list[str] = field(default_factory=list)


def _simulate(
    sc: Scenario, before: dict[str, str | None], live: engine.Status, warm_up: float = WARM_UP_S
) -> tuple[Any, _Trace]:
    world = World(sc)
    world.status = live
    run = world.run()
    seen = _Trace(dict(before))
    for t, label in run.trace:
        kind, _, rest = label.partition(":")
        if t < warm_up:  # the warm-up settles the engine's first view
            if kind == "running":
                service, _, node = rest.partition("@")
                seen.at_event[service] = node
            elif kind == "down":
                service, _, node = rest.partition("@")
                if seen.at_event.get(service) == node:
                    seen.at_event[service] = None
            continue
        if kind == "running":
            service, _, node = rest.partition("@")
            seen.running_at.setdefault(service, (t - warm_up, node))
        elif kind == "start":
            seen.started.add(rest.partition("@")[0])
        elif kind == "migrate":
            seen.migrated.add(rest.partition(":")[0])
        elif kind == "fence" and rest.endswith(":ok"):
            seen.fenced.append(rest.rsplit(":", 1)[0])
        elif kind == "stop":
            service = rest.partition("@")[0]
            status = run.status.services.get(service)
            if status is not None and status.desired is engine.Desired.STARTED:
                seen.stopped_for_room.add(service)
    return run, seen


def _fates(sc: Scenario, run: Any, seen: _Trace) -> list[GuestFate]:
    out: list[GuestFate] = []
    for name in sorted(sc.services):
        status = run.status.services.get(name)
        if status is None:
            continue
        now_on = seen.at_event.get(name)
        end_on = status.node if status.state in OCCUPYING else None
        if name in seen.stopped_for_room and status.state is not engine.ServiceState.STARTED:
            outcome = "preempted"
        elif now_on is None and end_on is None:
            outcome = "stopped" if status.desired is not engine.Desired.STARTED else "waits"
            if outcome == "stopped":
                continue  # not running now, not wanted: nothing to say
        elif end_on is None:
            outcome = "waits"
        elif name in seen.started:
            outcome = "starts" if now_on is None else "restarts"
        elif name in seen.migrated and end_on != now_on:
            outcome = "migrates"
        else:
            outcome = "stays"
        seconds = None
        if outcome in ("starts", "restarts", "migrates") and name in seen.running_at:
            seconds = round(seen.running_at[name][0], 1)
        out.append(GuestFate(name, now_on, end_on, outcome, seconds, status.reason))
    return out


def _simulated_note(sc: Scenario) -> str:
    return (
        "Simulated: the engine's own rules in virtual time, with this cluster's recent job "
        f"times (fence {sc.sim.fence_s:g} s, start {sc.sim.start_s:g} s, migration "
        f"{sc.sim.migrate_s:g} s). Nothing was sent to any host."
    )


def predict(cluster: Cluster, host: str, event: str = "power_off") -> Prediction:
    sc, before, live = scenario(cluster, host, event)
    run, seen = _simulate(sc, before, live)
    out = Prediction(cluster.name, host, event, fenced=sorted(set(seen.fenced)))
    out.timings = {
        "fence_s": sc.sim.fence_s,
        "start_s": sc.sim.start_s,
        "migrate_s": sc.sim.migrate_s,
        "silent_after_s": sc.settings.silent_after_s(),
    }
    out.guests = _fates(sc, run, seen)
    if (
        event == "power_off"
        and host not in out.fenced
        and any(g.before == host for g in out.guests)
    ):
        out.notes.append(f"{host} would not be fenced: its guests wait (see their reasons).")
    out.notes.append(_simulated_note(sc))
    return out


def dry_run(
    cluster: Cluster,
    *,
    domains: dict[str, engine.Domain | None] | None = None,
    services: dict[str, engine.ServiceConfig] | None = None,
    renamed_domains: dict[str, str] | None = None,
) -> Prediction:
    """The moves a configuration change would cause, before it is saved: the live cluster
    simulated twice from the engine's own status, as it is and with the change (`domains`:
    name -> new definition, None to remove; `services`: name -> new configuration;
    `renamed_domains`: old name -> new name, followed by the services that use it). Only the
    guests whose fate differs are listed: a move the cluster would make anyway is not the
    change's doing."""
    sc, before, live = scenario(cluster, None, None)
    base_run, base = _simulate(sc, before, live, warm_up=0.0)
    new_domains = dict(sc.domains)
    renames = renamed_domains or {}
    for old in renames:
        new_domains.pop(old, None)
    for name, definition in (domains or {}).items():
        if definition is None:
            new_domains.pop(name, None)
        else:
            new_domains[name] = definition
    new_services = dict(sc.services)
    for name, cfg in new_services.items():
        if cfg.domain is not None and cfg.domain in renames:
            new_services[name] = dataclasses.replace(cfg, domain=renames[cfg.domain])
    for name, cfg in (services or {}).items():
        current = new_services.get(name)
        if current is not None:  # where it runs and what is wanted stay the engine's
            cfg = dataclasses.replace(cfg, name=name, node=current.node, desired=current.desired)
        new_services[name] = cfg
    changed = dataclasses.replace(sc, domains=new_domains, services=new_services)
    run, seen = _simulate(changed, before, live, warm_up=0.0)
    unchanged = {(g.service, g.after, g.outcome) for g in _fates(sc, base_run, base)}
    out = Prediction(cluster.name, "", "dry_run", fenced=sorted(set(seen.fenced)))
    out.timings = {"start_s": sc.sim.start_s, "migrate_s": sc.sim.migrate_s}
    out.guests = [
        g for g in _fates(changed, run, seen) if (g.service, g.after, g.outcome) not in unchanged
    ]
    if not out.guests:
        out.notes.append("No guest would move, start or stop because of this change.")
    out.notes.append(_simulated_note(sc))
    return out


def as_dict(p: Prediction) -> dict[str, Any]:
    return {
        "cluster": p.cluster,
        "host": p.host,
        "event": p.event,
        "fenced": p.fenced,
        "timings": p.timings,
        "guests": [
            {
                "service": g.service,
                "before": g.before,
                "after": g.after,
                "outcome": g.outcome,
                "seconds": g.seconds,
                "reason": g.reason,
            }
            for g in p.guests
        ],
        "notes": p.notes,
    }
