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
from dataclasses import dataclass, field
from typing import Any

from django.db.models import F

from console import engine
from console.clusters.models import Cluster
from console.engine.sim.scenario import Event, Expect, NodeSpec, Scenario, SimSettings
from console.engine.sim.world import World
from console.engine.tick import OCCUPYING
from console.jobs.models import Job, JobStatus
from console.runtime import rules
from console.runtime.snapshot import load

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
    outcome: str  # stays | restarts | migrates | waits | preempted | stopped
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


def scenario(
    cluster: Cluster, host: str, event: str
) -> tuple[Scenario, dict[str, str | None], engine.Status]:
    """The live cluster as a scenario, with `event` on `host` after the warm-up, and the
    engine's live status on the scenario's clock."""
    loaded = load(cluster, rules.store(), rules._clock())
    snap = loaded.snapshot
    if host not in snap.hosts:
        raise WhatIfError("host", f"There is no host {host!r} in cluster {cluster.name}.")
    if event not in EVENTS:
        raise WhatIfError("event", f"{event!r} is not one of {', '.join(EVENTS)}.")
    live = {n: h.state for n, h in snap.status.hosts.items()}
    up = {engine.HostState.ONLINE, engine.HostState.MAINTENANCE}
    nodes = tuple(
        NodeSpec(
            name=o.name,
            memory_mb=o.memory_total_mb or 1,
            cpus=o.cpus or 1,
            power=live.get(o.name, engine.HostState.OFFLINE) in up or o.last_heartbeat is not None,
            fence="ok" if o.fence_device else "none",
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
    do = "power_off" if event == "power_off" else "maintenance_on"
    events.append(Event(WARM_UP_S, do, node=host))
    sc = Scenario(
        name=f"what-if {event} {host}",
        description="simulated on the live cluster",
        settings=snap.settings,
        sim=_timings(cluster),
        nodes=nodes,
        domains=dict(snap.domains),
        services=services,
        events=tuple(events),
        until=WARM_UP_S + HORIZON_S,
        expect=Expect(),
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
        if v["state"] in BUSY_TO_STARTED:
            v["state"], v["action"], v["target"] = "started", None, None
    raw["pending"] = {}
    if raw.get("fence_hold_until"):
        raw["fence_hold_until"] = max(0.0, float(raw["fence_hold_until"]) - now)
    return engine.Status.from_json(json.dumps(raw))


def predict(cluster: Cluster, host: str, event: str = "power_off") -> Prediction:
    sc, before, live = scenario(cluster, host, event)
    world = World(sc)
    world.status = live
    run = world.run()
    at_event: dict[str, str | None] = dict(before)
    running_at: dict[str, tuple[float, str]] = {}
    started_after: set[str] = set()  # a Start was sent: restarted (after a fence, a crash)
    migrated_after: set[str] = set()  # a live migration was sent
    stopped_for_room: set[str] = set()
    fenced: list[str] = []
    for t, label in run.trace:
        kind, _, rest = label.partition(":")
        if t < WARM_UP_S:  # the warm-up settles the engine's first view
            if kind == "running":
                service, _, node = rest.partition("@")
                at_event[service] = node
            elif kind == "down":
                service, _, node = rest.partition("@")
                if at_event.get(service) == node:
                    at_event[service] = None
            continue
        if kind == "running":
            service, _, node = rest.partition("@")
            running_at.setdefault(service, (t - WARM_UP_S, node))
        elif kind == "start":
            started_after.add(rest.partition("@")[0])
        elif kind == "migrate":
            migrated_after.add(rest.partition(":")[0])
        elif kind == "fence" and rest.endswith(":ok"):
            fenced.append(rest.rsplit(":", 1)[0])
        elif kind == "stop":
            service = rest.partition("@")[0]
            status = run.status.services.get(service)
            if status is not None and status.desired is engine.Desired.STARTED:
                stopped_for_room.add(service)
    out = Prediction(cluster.name, host, event, fenced=sorted(set(fenced)))
    out.timings = {
        "fence_s": sc.sim.fence_s,
        "start_s": sc.sim.start_s,
        "migrate_s": sc.sim.migrate_s,
        "silent_after_s": sc.settings.silent_after_s(),
    }
    for name in sorted(sc.services):
        status = run.status.services.get(name)
        now_on = at_event.get(name)
        end_on = status.node if status and status.state in OCCUPYING else None
        reason = status.reason if status else ""
        if status is None:
            continue
        if name in stopped_for_room and status.state is not engine.ServiceState.STARTED:
            outcome = "preempted"
        elif now_on is None and end_on is None:
            outcome = "stopped" if status.desired is not engine.Desired.STARTED else "waits"
            if outcome == "stopped":
                continue  # not running now, not wanted: nothing to say
        elif end_on is None:
            outcome = "waits"
        elif name in started_after:
            outcome = "restarts"
        elif name in migrated_after and end_on != now_on:
            outcome = "migrates"
        else:
            outcome = "stays"
        seconds = None
        if outcome in ("restarts", "migrates") and name in running_at:
            seconds = round(running_at[name][0], 1)
        out.guests.append(GuestFate(name, now_on, end_on, outcome, seconds, reason))
    if (
        event == "power_off"
        and host not in out.fenced
        and any(g.before == host for g in out.guests)
    ):
        out.notes.append(f"{host} would not be fenced: its guests wait (see their reasons).")
    out.notes.append(
        "Simulated: the engine's own rules in virtual time, with this cluster's recent job "
        f"times (fence {sc.sim.fence_s:g} s, start {sc.sim.start_s:g} s, migration "
        f"{sc.sim.migrate_s:g} s). Nothing was sent to any host."
    )
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
