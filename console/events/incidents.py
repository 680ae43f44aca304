"""Failovers as incidents, read back from the event log.

An incident starts when a host goes unreachable (the engine's ``host-state`` event). It
gathers, up to the host's next incident: the fence actions and their jobs' results, the
guests that had to move, where each started and how long after the failure was noticed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from console.jobs.models import Job


@dataclass
class GuestRecovery:
    name: str
    host: str = ""
    started_at: dt.datetime | None = None
    took_s: float | None = None


@dataclass
class Incident:
    host: str
    cluster: str
    noticed: dt.datetime
    reason: str
    fence: list[str] = field(default_factory=list)
    guests: list[GuestRecovery] = field(default_factory=list)
    ended: dt.datetime | None = None


def incidents(events: Any, limit: int = 50) -> list[Incident]:
    """Build incidents from engine events (oldest first in, newest incident first out)."""
    rows = list(
        events.filter(actor="engine")
        .select_related("cluster")
        .order_by("time", "id")
        .only("time", "verb", "object_type", "object_name", "message", "data", "cluster__name")
    )
    jobs = {
        j.pk: j
        for j in Job.objects.filter(
            pk__in=[r.data.get("job") for r in rows if r.verb == "fence" and r.data.get("job")]
        )
    }
    found: list[Incident] = []
    open_by_host: dict[str, Incident] = {}
    for ev in rows:
        message = ev.message or ""
        if ev.verb == "host-state" and "-> unreachable" in message:
            incident = Incident(
                host=ev.object_name,
                cluster=ev.cluster.name if ev.cluster else "",
                noticed=ev.time,
                reason=message.split(": ", 1)[-1],
            )
            open_by_host[ev.object_name] = incident
            found.append(incident)
            continue
        if ev.verb == "host-state" and ev.object_name in open_by_host and "-> online" in message:
            open_by_host.pop(ev.object_name).ended = ev.time
            continue
        if ev.verb == "fence" and ev.object_type == "action":
            fenced = open_by_host.get(str(ev.data.get("host", "")))
            if fenced is not None:
                job = jobs.get(ev.data.get("job"))
                result = job.get_status_display().lower() if job else "unknown"
                if job and job.explanation:
                    result += f": {job.explanation}"
                fenced.fence.append(
                    f"{ev.data.get('device', '?')} via {ev.data.get('runner', '?')}: {result}"
                )
            continue
        if ev.verb == "host-state" and ev.object_name in open_by_host and "-> fenced" in message:
            open_by_host[ev.object_name].fence.append(f"fenced at {ev.time:%H:%M:%S}")
            continue
        if ev.verb == "service-state" and "-> fence" in message.split(":", 1)[0]:
            # The engine's reason names the silent host ("may still run on silent X: ...").
            named = [i for h, i in open_by_host.items() if h in message]
            owner = (
                named[0] if named else (found[-1] if found and found[-1].ended is None else None)
            )
            if owner is not None and all(g.name != ev.object_name for g in owner.guests):
                owner.guests.append(GuestRecovery(ev.object_name))
            continue
        if ev.verb == "start" and ev.object_type == "action":
            _placed(open_by_host, str(ev.data.get("service", "")), str(ev.data.get("host", "")))
            continue
        if ev.verb == "service-state" and "-> started" in message.split(":", 1)[0]:
            for incident in open_by_host.values():
                for guest in incident.guests:
                    if guest.name == ev.object_name and guest.started_at is None:
                        guest.started_at = ev.time
                        guest.took_s = (ev.time - incident.noticed).total_seconds()
    found.reverse()
    return found[:limit]


def _placed(open_by_host: dict[str, Incident], service: str, host: str) -> None:
    for incident in open_by_host.values():
        for guest in incident.guests:
            if guest.name == service and guest.started_at is None:
                guest.host = host
