"""Incidents read back from the engine's structured events: one per host failure and one per
guest crash or failed recovery.

A **host incident** starts when a host goes unreachable (``host-state``, ``data.new ==
"unreachable"``). It gathers, until the host is online again: every fence attempt (the fence
action and its job's result, level by level), the moment the host was confirmed off, and each
guest that had to move — found by the typed ``data`` of its ``service-state`` event (its host or
suspects name the failed host), never by parsing prose — with its path: waiting for the fence →
start dispatched → running, each step's duration and the total recovery time (RTO).

A **guest incident** starts when a running guest stops without being asked (``recovering``
after ``started``/``starting``) or a recovery gives up (``failed``), and ends when it runs again.

Events written before the engine's events carried typed data are read from their message
("old -> new: reason"), so older logs still show their incidents.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from console.jobs.models import Job

#: engine states in which a guest of a failed host is still on its way back
_ON_THE_WAY = {"fence", "recovering", "waiting", "starting"}


@dataclass
class Step:
    """One stretch of a guest's path, for the timeline strip."""

    label: str  # "fence wait", "start", "restart"
    started: dt.datetime
    ended: dt.datetime | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.ended is None else (self.ended - self.started).total_seconds()


@dataclass
class GuestRecovery:
    name: str
    host: str = ""  # where it runs again
    started_at: dt.datetime | None = None  # running again
    took_s: float | None = None  # RTO: from the incident's detection to running again
    state: str = ""  # the engine's last word on it within the incident
    reason: str = ""
    steps: list[Step] = field(default_factory=list)


@dataclass
class Incident:
    host: str  # the failed host ('' for a guest incident without one)
    cluster: str
    noticed: dt.datetime
    reason: str
    kind: str = "host"  # "host" or "guest"
    subject: str = ""  # the failed host or the crashed guest
    fence: list[str] = field(default_factory=list)
    fenced_at: dt.datetime | None = None
    guests: list[GuestRecovery] = field(default_factory=list)
    ended: dt.datetime | None = None
    #: opened by a guest's event before the host's own (the engine logs the guests first)
    provisional: bool = False

    @property
    def title(self) -> str:
        if self.kind == "host":
            return f"{self.subject} failed"
        return f"{self.subject} crashed" if "crash" in self.reason else f"{self.subject} failed"

    @property
    def rto_s(self) -> float | None:
        """The longest time any guest took to run again (None while one has not)."""
        times = [g.took_s for g in self.guests]
        if not times or any(t is None for t in times):
            return None
        return max(t for t in times if t is not None)

    def timeline(self, now: dt.datetime, shown: int = 25) -> list[dict[str, Any]]:
        """Rows of bars (percent of the incident's span) for the SVG strip, first guests."""
        end = self.ended or now
        for g in self.guests:
            for s in g.steps:
                end = max(end, s.ended or now)
        span = max((end - self.noticed).total_seconds(), 0.001)
        rows = []
        for g in self.guests[:shown]:
            bars = []
            for s in g.steps:
                left = (s.started - self.noticed).total_seconds() / span * 100
                right = ((s.ended or now) - self.noticed).total_seconds() / span * 100
                bars.append(
                    {
                        "label": s.label,
                        "x": round(max(left, 0.0), 2),
                        "w": round(max(right - left, 0.5), 2),
                        "open": s.ended is None,
                        "seconds": s.seconds,
                    }
                )
            rows.append({"guest": g.name, "bars": bars})
        return rows


def change(ev: Any) -> tuple[str | None, str | None, str]:
    """(old, new, reason) of a state-change event, typed data first, the message else."""
    data = ev.data if isinstance(ev.data, dict) else {}
    if "new" in data:
        return data.get("old"), data.get("new"), str(data.get("reason", ""))
    message = ev.message or ""
    head, _, reason = message.partition(": ")
    old, arrow, new = head.partition(" -> ")
    if not arrow:
        return None, None, message
    return (None if old == "new" else old.strip()), new.strip(), reason


def _host_of(ev: Any) -> str:
    """The host a silent host's guest waits for: its only suspect, else its node."""
    data = ev.data if isinstance(ev.data, dict) else {}
    suspects = [str(h) for h in data.get("suspects") or ()]
    return suspects[0] if len(suspects) == 1 else str(data.get("host") or "")


def _hosts_of(ev: Any) -> set[str]:
    data = ev.data if isinstance(ev.data, dict) else {}
    hosts = {str(h) for h in (data.get("host"), data.get("target")) if h}
    hosts.update(str(h) for h in data.get("suspects") or ())
    return hosts


INCIDENT_VERBS = ("host-state", "service-state", "fence", "start")


class _Row(NamedTuple):
    """An engine event as incidents read it."""

    time: dt.datetime
    verb: str
    object_type: str
    object_name: str
    message: str
    data: Any
    cluster_name: str | None


WINDOW = 20_000


def incidents(events: Any, limit: int = 50, window: int = WINDOW) -> list[Incident]:
    """Incidents from engine events (oldest first in, newest incident first out)."""
    # the newest engine events that incidents are made of, oldest first (bounded: the page and
    # the metrics cost the same whatever the log's length)
    # plain rows, not model instances: half the cost at thousands of events
    rows = [
        _Row(*values)
        for values in events.filter(actor="engine", verb__in=INCIDENT_VERBS)
        .order_by("-id")
        .values_list(
            "time", "verb", "object_type", "object_name", "message", "data", "cluster__name"
        )[:window]
    ]
    rows.reverse()
    fence_jobs = {
        j.pk: j
        for j in Job.objects.filter(
            pk__in=[r.data.get("job") for r in rows if r.verb == "fence" and r.data.get("job")]
        )
    }
    found: list[Incident] = []
    by_host: dict[str, Incident] = {}  # open host incidents
    by_guest: dict[str, Incident] = {}  # the open incident each guest belongs to

    def guest(incident: Incident, name: str) -> GuestRecovery:
        for g in incident.guests:
            if g.name == name:
                return g
        g = GuestRecovery(name)
        incident.guests.append(g)
        return g

    def open_host(name: str, cluster: str, at: dt.datetime, reason: str) -> Incident:
        incident = by_host.get(name)
        if incident is None:
            incident = Incident(name, cluster, at, reason, "host", name, provisional=True)
            by_host[name] = incident
            found.append(incident)
        else:
            incident.reason = reason
        return incident

    def close_step(g: GuestRecovery, at: dt.datetime) -> None:
        if g.steps and g.steps[-1].ended is None:
            g.steps[-1].ended = at

    for ev in rows:
        cluster = ev.cluster_name or ""
        if ev.verb == "host-state":
            old, new, reason = change(ev)
            name = ev.object_name
            if new == "unreachable" and (name not in by_host or by_host[name].provisional):
                open_host(name, cluster, ev.time, reason).provisional = False
            elif name in by_host and new == "fenced":
                by_host[name].fenced_at = ev.time
                by_host[name].fence.append(f"confirmed off at {ev.time:%H:%M:%S}: {reason}")
                for g in by_host[name].guests:
                    if g.steps and g.steps[-1].label == "fence wait":
                        close_step(g, ev.time)
            elif name in by_host and new == "unreachable" and old == "fencing":
                by_host[name].fence.append(f"attempt failed at {ev.time:%H:%M:%S}: {reason}")
            elif name in by_host and new in ("online", "maintenance"):
                by_host.pop(name).ended = ev.time
            continue
        if ev.verb == "fence" and ev.object_type == "action":
            fenced = by_host.get(str(ev.data.get("host", "")))
            if fenced is not None:
                job = fence_jobs.get(ev.data.get("job"))
                result = job.get_status_display().lower() if job else "unknown"
                if job and job.explanation:
                    result += f": {job.explanation}"
                fenced.fence.append(
                    f"{ev.data.get('device', '?')} via {ev.data.get('runner', '?')}: {result}"
                )
            continue
        if ev.verb == "start" and ev.object_type == "action":
            name = str(ev.data.get("service", ""))
            owner = by_guest.get(name)
            if owner is not None:
                g = guest(owner, name)
                close_step(g, ev.time)
                label = "restart" if owner.kind == "guest" else "start"
                g.steps.append(Step(label, ev.time))
                g.host = str(ev.data.get("host", ""))
            continue
        if ev.verb != "service-state":
            continue
        old, new, reason = change(ev)
        name = ev.object_name
        owner = by_guest.get(name)
        if new == "fence":
            hosts = _hosts_of(ev) or {h for h in by_host if h in (ev.message or "")}
            if not any(h in by_host for h in hosts) and (data_host := _host_of(ev)):
                # the engine moves a silent host's guests first, then the host, in one tick
                open_host(data_host, cluster, ev.time, reason)
            candidates = [by_host[h] for h in sorted(hosts) if h in by_host]
            if candidates and owner is None:
                owner = candidates[0]
                by_guest[name] = owner
                g = guest(owner, name)
                g.steps.append(Step("fence wait", ev.time))
            if owner is not None:
                g = guest(owner, name)
                g.state, g.reason = new or "", reason
            continue
        if owner is None and (new == "failed" or (new == "recovering" and old != "fence")):
            owner = Incident("", cluster, ev.time, reason, "guest", name)
            crashed_on = ev.data.get("host") if isinstance(ev.data, dict) else None
            owner.host = str(crashed_on or "")
            found.append(owner)
            by_guest[name] = owner
            guest(owner, name).steps.append(Step("recovery", ev.time))
        if owner is None:
            continue
        g = guest(owner, name)
        g.state, g.reason = new or "", reason
        if new == "started":
            close_step(g, ev.time)
            g.started_at = ev.time
            g.took_s = (ev.time - owner.noticed).total_seconds()
            if isinstance(ev.data, dict) and ev.data.get("host"):
                g.host = str(ev.data["host"])
            del by_guest[name]
            if owner.kind == "guest":
                owner.ended = ev.time
        elif new not in _ON_THE_WAY:  # failed, disabled, stopped: the path ends here
            close_step(g, ev.time)
            del by_guest[name]
            if owner.kind == "guest":
                owner.ended = ev.time
    found.reverse()
    return found[:limit]
