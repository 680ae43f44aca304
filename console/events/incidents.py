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

A host incident also has a timeline of its own (``milestones``): noticed, each fence attempt
with its job's result, confirmed off, and — with shared storage — the survivors' dlm
acknowledging the fence (``dlm_tool fence_ack``, the ``dlm-fence-ack`` job that
console/storage/services.py starts when a fence succeeds or a person acknowledges the host
down), then back online; the dlm acknowledgement is a row of the timeline strip too.

An incident also lists the guests stopped during it to make room for one of its guests
(``made_room``), from the typed ``room`` of their ``service-state`` events: on which host,
for whom (both priorities), saved or shut down (and why saving was refused), and when it ran
again — resumed from its saved state or booted afresh — even after the incident is over.

Events written before the engine's events carried typed data are read from their message
("old -> new: reason"), so older logs still show their incidents.

The events are folded once per change (kept per process, keyed by the filter, with the newest
incident event): a page view in between reads one row and the jobs whose state may have moved
(the fence jobs' results, the dlm acknowledgements); after a change, only the events since
are read.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from console.jobs.models import Job, JobStatus

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
class MadeRoom:
    """A guest stopped during the incident to make room for one of its guests, read from the
    typed ``room`` of its ``service-state`` events (console/ha/runner.py)."""

    name: str
    host: str  # where it was stopped
    for_guest: str
    priority: int  # the guest room was made for
    own_priority: int
    stopped: dt.datetime
    save: bool  # a managed save was asked
    how: str = "saving"  # "saving" / "stopping" while the stop runs, then "saved" / "shut down"
    why: str = ""  # why it was shut down instead of saved
    done: dt.datetime | None = None  # saved or shut down at
    back: dt.datetime | None = None  # running again
    back_on: str = ""
    resumed: bool = False  # from its saved state (not a fresh boot)
    end: str = ""  # it did not come back: the engine's last word (a person stopped it, ...)


@dataclass(frozen=True)
class Milestone:
    """One row of a host incident's own timeline."""

    at: dt.datetime | None  # None: not yet (a dlm acknowledgement still running)
    what: str  # "noticed", "fence", "fence failed", "confirmed off", "dlm", "back online"
    detail: str = ""
    #: the fence job whose result completes the row (read when the incident is shown)
    job: int | None = None


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
    #: the host incident's own timeline (fence attempts, confirmed off, dlm, back online)
    milestones: list[Milestone] = field(default_factory=list)
    #: the dlm acknowledgement of the fence (shared storage): started, and done (None: not yet)
    dlm_started: dt.datetime | None = None
    dlm_done: dt.datetime | None = None
    #: guests stopped to make room for its guests: saved or shut down, for whom, back when
    made_room: list[MadeRoom] = field(default_factory=list)

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
        if self.dlm_started is not None:
            end = max(end, self.dlm_done or now)
        span = max((end - self.noticed).total_seconds(), 0.001)
        rows = []
        if self.dlm_started is not None:  # the survivors' dlm told of the fence: a row of its own
            steps = [Step("dlm ack", self.dlm_started, self.dlm_done)]
            rows.append({"guest": "dlm", "bars": self._bars(steps, span, now)})
        for g in self.guests[:shown]:
            rows.append({"guest": g.name, "bars": self._bars(g.steps, span, now)})
        return rows

    def _bars(self, steps: list[Step], span: float, now: dt.datetime) -> list[dict[str, Any]]:
        bars = []
        for s in steps:
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
        return bars


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
    id: int = 0


WINDOW = 20_000


def incidents(events: Any, limit: int = 50, window: int = WINDOW) -> list[Incident]:
    """Incidents from engine events (oldest first in, newest incident first out), with the
    fence jobs' results and the dlm acknowledgements as they are now."""
    found = _folded(events.filter(actor="engine", verb__in=INCIDENT_VERBS), window)[:limit]
    return _completed(found)


@dataclass
class _Kept:
    """A filter's folded incidents and the rows they were folded from."""

    newest: tuple[int, dt.datetime]  # the newest row's id and time
    rows: list[_Row]  # oldest first, at most the window
    found: list[Incident]


#: the folded incidents per filter (see the module's doc)
_kept: dict[str, _Kept] = {}
_kept_lock = threading.Lock()
KEPT_FILTERS = 32
#: rows read again behind the newest kept one: under PostgreSQL ids are not given in commit
#: order, so an event may appear just below the newest a page had seen
TAIL = 500
_COLUMNS = ("time", "verb", "object_type", "object_name", "message", "data", "cluster__name", "id")


def _rows(qs: Any, limit: int) -> list[_Row]:
    """The newest ``limit`` rows of ``qs``, oldest first; plain rows, not model instances
    (half the cost at thousands of events)."""
    rows = [_Row(*values) for values in qs.order_by("-id").values_list(*_COLUMNS)[:limit]]
    rows.reverse()
    return rows


def _folded(qs: Any, window: int) -> list[Incident]:
    """The incidents of ``qs``'s newest ``window`` events, folded again when its newest event
    moved. Only the events since the kept ones are read (and a `TAIL` before them): at a crash
    every few seconds and 20,000 events in the window, reading them all again was 80 % of the
    incidents page. The log is append-only — Haven deletes no event; a test database reuses
    ids, so the kept newest row is checked to be the one it was, else all is read again."""
    where = f"{qs.query}|{window}"
    newest = qs.order_by("-id").values_list("id", "time").first()
    if newest is None:
        return []
    kept = _kept.get(where)
    if kept is not None and kept.newest == newest:
        return kept.found
    rows: list[_Row] | None = None
    if (
        kept is not None
        and newest[0] > kept.newest[0]
        and qs.filter(id=kept.newest[0], time=kept.newest[1]).exists()
    ):
        since = kept.newest[0] - TAIL
        fresh = _rows(qs.filter(id__gt=since), window + TAIL)
        if len(fresh) < window:
            rows = [r for r in kept.rows if r.id <= since] + fresh
            rows = rows[-window:]
    if rows is None:
        rows = _rows(qs, window)
    found = _fold(rows)
    with _kept_lock:
        if len(_kept) >= KEPT_FILTERS:
            _kept.clear()
        _kept[where] = _Kept(newest, rows, found)
    return found


def _completed(found: list[Incident]) -> list[Incident]:
    """Copies of ``found`` with what jobs say now: each fence attempt's result and the dlm
    acknowledgement of a fenced host (shared storage). The kept incidents are not changed."""
    fence_ids = {m.job for i in found for m in i.milestones if m.job is not None}
    fence_jobs = {j.pk: j for j in Job.objects.filter(pk__in=fence_ids)} if fence_ids else {}
    hosts = {i.subject for i in found if i.kind == "host"}
    acks: dict[tuple[str, str], list[Job]] = {}
    if hosts:
        for job in (
            Job.objects.filter(kind="dlm-fence-ack", params__host__in=sorted(hosts))
            .select_related("cluster")
            .order_by("pk")
        ):
            name = job.cluster.name if job.cluster else ""
            acks.setdefault((name, str(job.params.get("host", ""))), []).append(job)
    out = []
    for i in found:
        milestones = [_with_result(m, fence_jobs) for m in i.milestones]
        if i.kind == "host":
            milestones.insert(0, Milestone(i.noticed, "noticed", i.reason))
            if i.ended is not None:
                milestones.append(Milestone(i.ended, "back online"))
        dlm_started = dlm_done = None
        for job in acks.get((i.cluster, i.subject), []) if i.kind == "host" else []:
            if job.created < i.noticed or (i.ended is not None and job.created > i.ended):
                continue
            dlm_started, dlm_done = job.created, job.finished
            milestones.append(_dlm_milestone(job))
        milestones.sort(key=lambda m: (m.at is None, m.at or i.noticed))
        fence = [_fence_line(m) for m in milestones if m.what in FENCE_ROWS]
        out.append(
            replace(
                i,
                milestones=milestones,
                fence=fence,
                dlm_started=dlm_started,
                dlm_done=dlm_done,
            )
        )
    return out


FENCE_ROWS = ("fence", "fence failed", "confirmed off")


def _with_result(m: Milestone, jobs: dict[int, Job]) -> Milestone:
    if m.what != "fence":
        return m
    job = jobs.get(m.job) if m.job is not None else None
    result = job.get_status_display().lower() if job else "unknown"
    if job and job.explanation:
        result += f": {job.explanation}"
    return replace(m, detail=f"{m.detail}: {result}")


def _fence_line(m: Milestone) -> str:
    """The fence row as the incident's "Fence:" line says it."""
    if m.what == "fence":
        return m.detail
    when = f"{m.at:%H:%M:%S}" if m.at else "?"
    return f"{'confirmed off' if m.what == 'confirmed off' else 'attempt failed'} at {when}: " + (
        m.detail
    )


def _dlm_milestone(job: Job) -> Milestone:
    """The survivors' dlm told that the host is fenced (``dlm_tool fence_ack`` on each)."""
    survivors = ", ".join(job.params.get("survivors") or []) or "the survivors"
    if job.status == JobStatus.SUCCEEDED:
        return Milestone(job.finished, "dlm", f"dlm on {survivors} acknowledged the fence", job.pk)
    if job.status in (JobStatus.FAILED, JobStatus.LOST):
        explanation = f": {job.explanation[:200]}" if job.explanation else ""
        return Milestone(
            job.finished, "dlm", f"telling dlm on {survivors} failed{explanation}", job.pk
        )
    return Milestone(None, "dlm", f"telling dlm on {survivors} (job {job.pk}, running)", job.pk)


def _fold(rows: list[_Row]) -> list[Incident]:
    """The incidents of ``rows`` (oldest first), newest first."""
    found: list[Incident] = []
    by_host: dict[str, Incident] = {}  # open host incidents
    by_guest: dict[str, Incident] = {}  # the open incident each guest belongs to

    named: dict[int, dict[str, GuestRecovery]] = {}  # each incident's guests by name

    def guest(incident: Incident, name: str) -> GuestRecovery:
        of = named.setdefault(id(incident), {})
        g = of.get(name)
        if g is None:
            g = of[name] = GuestRecovery(name)
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

    rooms: dict[str, MadeRoom] = {}  # guests stopped to make room, until they run again

    def room_event(ev: _Row, new: str | None) -> None:
        """The typed ``room`` of a guest's state change: stopped for whom, saved or not,
        then its way back (its own events, after the incident too)."""
        data = ev.data if isinstance(ev.data, dict) else {}
        room = data.get("room") if isinstance(data.get("room"), dict) else None
        name = ev.object_name
        if room is not None and room.get("for"):  # the stop
            owner = by_guest.get(str(room["for"]))
            if owner is None:
                return
            save = bool(room.get("save"))
            stopped = MadeRoom(
                name,
                str(room.get("host") or ""),
                str(room["for"]),
                int(room.get("priority") or 0),
                int(room.get("own_priority") or 0),
                ev.time,
                save,
                how="saving" if save else "stopping",
            )
            owner.made_room.append(stopped)
            rooms[name] = stopped
            return
        row = rooms.get(name)
        if row is None:
            return
        if room is not None and room.get("saved") is not None:  # its result
            row.done = ev.time
            row.how = "saved" if room["saved"] else "shut down"
            row.why = str(room.get("not_saved") or "")
        elif new == "starting":
            row.resumed = data.get("cause") == "resume"
        elif new == "started":
            row.back, row.back_on = ev.time, str(data.get("host") or "")
            del rooms[name]
        elif new in ("stopped", "disabled", "failed"):
            row.end = f"{new}: {data.get('reason', '')}"
            del rooms[name]

    for ev in rows:
        cluster = ev.cluster_name or ""
        if ev.verb == "host-state":
            old, new, reason = change(ev)
            name = ev.object_name
            if new == "unreachable" and (name not in by_host or by_host[name].provisional):
                open_host(name, cluster, ev.time, reason).provisional = False
            elif name in by_host and new == "fenced":
                by_host[name].fenced_at = ev.time
                by_host[name].milestones.append(Milestone(ev.time, "confirmed off", reason))
                for g in by_host[name].guests:
                    if g.steps and g.steps[-1].label == "fence wait":
                        close_step(g, ev.time)
            elif name in by_host and new == "unreachable" and old == "fencing":
                by_host[name].milestones.append(Milestone(ev.time, "fence failed", reason))
            elif name in by_host and new in ("online", "maintenance"):
                by_host.pop(name).ended = ev.time
            continue
        if ev.verb == "fence" and ev.object_type == "action":
            fenced = by_host.get(str(ev.data.get("host", "")))
            if fenced is not None:
                job = ev.data.get("job")
                fenced.milestones.append(
                    Milestone(
                        ev.time,
                        "fence",
                        f"{ev.data.get('device', '?')} via {ev.data.get('runner', '?')}",
                        job if isinstance(job, int) else None,
                    )
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
        room_event(ev, new)
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
    return found
