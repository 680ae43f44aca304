"""The HA runner: one at a time per cluster, it builds the snapshot, calls the engine's
``tick``, then stores the status and turns actions into jobs in one transaction.

The snapshot is read and the engine decides before that write transaction opens (reads only:
under SQLite's IMMEDIATE transactions a tick held the database's one write lock for its whole
length, and the drainer's results and the pages' writes waited behind it). Nothing is lost by
it: the write commits only if the engine state row still has the tick counter the snapshot
read (below), so a snapshot that another tick overtook writes nothing; what was written
meanwhile (a job's result, a person's command) is in the next snapshot. A decision is never
written late: when the write lock took longer than `DECIDED_MAX_WAIT_S` to come, the tick
decides again inside the transaction, on a fresh snapshot.

It runs every second (Celery beat) and at once when a lifecycle event or a job result comes
in. A wake that arrives while another runner holds the lock is not lost: the holder runs
again before it lets go.

The lock (`Store.lock`) lives 3 s and is renewed while a tick runs, so a worker killed while
it holds the lock stalls HA for at most 3 s (a runner that finds a lock with less than half its
ttl left, i.e. a holder that missed its renewals, waits for it rather than for the next beat).
A tick commits only if, at its very end, its lock
is still held (`Lease.check`) and the engine state row still has the tick counter it read
(compare-and-set): a runner that lost its lock mid-tick rolls back and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import redis
from django.db import transaction
from django.utils import timezone

from console import engine
from console.clusters.models import Cluster, Host
from console.clusters.stream import publish_change
from console.core import broker
from console.engine.status import service_to_json
from console.engine.tick import OCCUPYING
from console.events.models import Severity
from console.events.services import EventFields, record, record_many
from console.ha import actions as action_steps
from console.ha import snapshot
from console.ha.models import EngineServiceStatus, EngineState, PendingCommand
from console.ha.snapshot import Loaded, load
from console.ha.store import LOCK_TTL_S, Lease, LockLost, Store
from console.jobs import services as jobs
from console.jobs.models import Job
from console.monitoring import ticks
from console.services.models import VmService

log = logging.getLogger("haven.runner")
MAX_ROUNDS = 5


@dataclass
class TickReport:
    cluster: str
    actions: list[engine.Action] = field(default_factory=list)
    jobs: list[int] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    #: the ticking thread's CPU time (on a loaded machine, far below the wall time)
    cpu_s: float = 0.0
    #: CPU time of each phase ("load", "engine", "write"), for the slow-tick log line
    phases: dict[str, float] = field(default_factory=dict)
    #: the configuration was read from the database for this tick (not kept from before)
    config_read: bool = False
    #: of the wall time, how long Python's garbage collector ran (any thread of the process)
    gc_s: float = 0.0


#: a tick longer than this is logged with its phases (the console's own speed, explained)
SLOW_TICK_S = 0.25


class _GcTime:
    """The seconds Python's garbage collector has run in this process (``gc.callbacks``)."""

    total = 0.0
    _began = 0.0

    @classmethod
    def callback(cls, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            cls._began = time.perf_counter()
        else:
            cls.total += time.perf_counter() - cls._began


if _GcTime.callback not in gc.callbacks:
    gc.callbacks.append(_GcTime.callback)


def run(cluster_id: int, store: Store | None = None) -> list[TickReport]:
    """Run the engine for one cluster unless another runner does; returns what it did.
    Redis away or restarting: nothing is written (the tick's transaction rolls back), one
    warning says why, and the next tick (beat's, the drainer's backup) tries again."""
    store = store or _shared()
    try:
        return _run(cluster_id, store)
    except broker.UNAVAILABLE as exc:
        log.warning("tick of cluster %s not made: %s", cluster_id, broker.unavailable(exc))
        return []


def _run(cluster_id: int, store: Store) -> list[TickReport]:
    name = f"runner:{cluster_id}"
    reports: list[TickReport] = []
    for attempt in (1, 2):
        with store.lock(name) as lease:
            if lease:
                _rounds(cluster_id, store, name, lease, reports)
                return reports
        left = store.lock_left_s(name)
        if attempt == 1 and left is not None and left < LOCK_TTL_S / 2:
            # A live holder renews every third of the ttl: this one missed a renewal and is
            # likely dead. Wait for its lock to expire rather than for the next beat.
            _sleep(store, left + 0.01)
            continue
        break
    store.request(name)
    return reports


def _sleep(store: Store, seconds: float) -> None:
    """Wait on the store's clock: real time sleeps; a virtual clock that can be advanced
    (``advance(seconds)``, the scenarios' runtime) is moved on instead."""
    advance = getattr(store.clock, "advance", None)
    if advance is not None:
        advance(seconds)
    else:
        time.sleep(seconds)


def _rounds(
    cluster_id: int, store: Store, name: str, lease: Lease, reports: list[TickReport]
) -> None:
    """Tick while wakes keep coming in (at most MAX_ROUNDS), holding the lock."""
    for _ in range(MAX_ROUNDS):
        store.take_request(name)
        try:
            reports.append(tick_once(cluster_id, store, lease=lease))
        except LockLost as exc:
            log.warning("tick of cluster %s rolled back: %s", cluster_id, exc)
            return
        if not store.take_request(name):
            return
        store.request(name)  # put it back for the loop's next round to take


def _shared() -> Store:
    from console.ha.tasks import store

    return store()


def run_all(store: Store | None = None) -> list[TickReport]:
    store = store or _shared()
    out: list[TickReport] = []
    for cluster_id in Cluster.objects.values_list("pk", flat=True):
        out.extend(run(cluster_id, store))
    return out


def tick_once(
    cluster_id: int, store: Store, now: float | None = None, lease: Lease | None = None
) -> TickReport:
    """One decision. `now` defaults to the moment the heartbeats are read (a slow load must
    not make hosts look silent). With a `lease`, the transaction commits only if the lock is
    still held at the end (else `LockLost` and nothing is written)."""
    started, cpu, gc_before = time.perf_counter(), time.thread_time(), _GcTime.total
    try:
        cluster = Cluster.objects.get(pk=cluster_id)
        try:
            loaded, decision, report = _decide(cluster, store, now, lease, before_lock=True)
        except _Stale:  # the write lock came late: decide again, holding it
            loaded, decision, report = _decide(cluster, store, now, lease, before_lock=False)
    except BaseException:
        snapshot.forget(cluster_id)  # rows kept in memory may hold what was rolled back
        raise
    snapshot.remember_status(cluster_id, loaded.state.ticks, decision.status)
    for action in report.actions:  # committed: what was queued for a fenced host never runs
        if isinstance(action, engine.Fence):
            try:
                store.drop_commands(action.host)
            except redis.RedisError as exc:  # the commands still expire (HAVEN_COMMAND_TTL_S)
                log.warning("could not drop the commands queued for %s: %s", action.host, exc)
    if decision.transitions or decision.actions:
        publish_change(store, cluster_id)  # open cluster pages refresh now (SSE)
    report.duration_s = time.perf_counter() - started
    report.cpu_s = time.thread_time() - cpu
    report.config_read = loaded.fresh
    report.gc_s = _GcTime.total - gc_before
    ticks.record_tick(store, cluster_id, report.duration_s, report.cpu_s)
    if report.duration_s > SLOW_TICK_S:
        log.info("slow tick: %s", slow_tick_line(report))
    if loaded.fresh and len(loaded.services) >= snapshot.HEAP_FREEZE_FROM:
        snapshot.settle_heap()  # after the commit: the decision does not wait for it
    return report


def slow_tick_line(report: TickReport) -> str:
    """One line on where a tick's time went: its wall and CPU time, each phase's CPU time,
    whether the configuration was read, and the garbage collector's share."""
    phases = ", ".join(f"{name} {cpu * 1000:.0f}" for name, cpu in report.phases.items())
    return (
        f"cluster {report.cluster} {report.duration_s * 1000:.0f} ms "
        f"(CPU {report.cpu_s * 1000:.0f} ms: {phases}; "
        f"configuration {'read' if report.config_read else 'kept'}, "
        f"{len(report.actions)} actions; garbage collector {report.gc_s * 1000:.0f} ms)"
    )


#: a decision made before the write transaction opened is written only if the transaction's
#: lock came within this long; else the tick decides again inside it (as fresh as ever)
DECIDED_MAX_WAIT_S = 0.5


class _Stale(Exception):
    """The write lock came too late for a decision made before it."""


def _decide(
    cluster: Cluster, store: Store, now: float | None, lease: Lease | None, *, before_lock: bool
) -> tuple[Loaded, engine.Decision, TickReport]:
    """Snapshot, engine, write. `before_lock`: the snapshot is read and the engine decides
    before the write transaction opens (SQLite's IMMEDIATE transaction takes the database's one
    write lock at its start: a whole tick under it held up the drainer's results and the pages'
    writes); the decision is written only if the lock came within `DECIDED_MAX_WAIT_S`
    (`_Stale` otherwise, nothing written). Else all of it inside the transaction."""
    clock = _PhaseClock()
    if before_lock:
        loaded = load(cluster, store, now, cached=True)  # reads: no write lock held yet
        clock.lap("load")
        decision = engine.tick(loaded.snapshot, loaded.now)
        clock.lap("engine")
        decided = time.monotonic()
        with transaction.atomic():
            if time.monotonic() - decided > DECIDED_MAX_WAIT_S:
                raise _Stale
            report = _apply(cluster, loaded, decision, loaded.now)
            if lease is not None:
                lease.check()
    else:
        with transaction.atomic():
            loaded = load(cluster, store, now, cached=True)
            clock.lap("load")
            decision = engine.tick(loaded.snapshot, loaded.now)
            clock.lap("engine")
            report = _apply(cluster, loaded, decision, loaded.now)
            if lease is not None:
                lease.check()
    clock.lap("write")
    report.phases = clock.phases
    return loaded, decision, report


class _PhaseClock:
    """The ticking thread's CPU time since the last lap, added to `phases` under a name."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self.at = time.thread_time()

    def lap(self, name: str) -> None:
        at = time.thread_time()
        self.phases[name] = self.phases.get(name, 0.0) + at - self.at
        self.at = at


def _ts(value: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(value, tz=dt.UTC)


def _apply(cluster: Cluster, loaded: Loaded, decision: engine.Decision, now: float) -> TickReport:
    report = TickReport(cluster.name, list(decision.actions), log=list(decision.log))
    status = decision.status
    state = loaded.state
    if status.alarm != state.alarm:
        record(
            actor="engine",
            verb="alarm",
            obj=cluster,
            cluster=cluster,
            result="failed" if status.alarm else "ok",
            severity=Severity.CRITICAL if status.alarm else Severity.INFO,
            message=status.alarm or "alarm cleared",
            data={"alarm": status.alarm, "previous": state.alarm},
        )
    # Compare-and-set on the tick counter: the state row is the lock's fencing token. A runner
    # whose snapshot another runner's tick has overtaken (its lock expired under it) writes
    # nothing; under PostgreSQL the second UPDATE waits for the first commit, then matches 0.
    status_json = replace(status, services={}, active=frozenset()).to_json()
    written = EngineState.objects.filter(pk=state.pk, ticks=state.ticks).update(
        status_json=status_json,
        alarm=status.alarm,
        ticks=state.ticks + 1,
        updated=timezone.now(),
    )
    if written != 1:
        raise LockLost(f"cluster {cluster.name}: another runner decided since this snapshot")
    state.status_json, state.alarm, state.ticks = status_json, status.alarm, state.ticks + 1
    _write_status_pieces(cluster, loaded, status, state.ticks)
    jobs.mark_engine_notified([j.pk for j in loaded.result_jobs])
    PendingCommand.objects.filter(pk__in=[c.pk for c in loaded.commands]).update(delivered=True)

    _write_hosts(loaded, status, now)
    _write_services(loaded, status, now)
    record_many(
        [
            {
                "actor": "engine",
                "verb": f"{t.kind}-state",
                "object_type": t.kind,
                "object_name": t.name,
                "cluster": cluster,
                "result": "info",
                "severity": transition_severity(t),
                "message": f"{t.old.value if t.old else 'new'} -> {t.new.value}: {t.reason}",
                "data": transition_data(t, status),
            }
            for t in decision.transitions
        ]
    )
    for t in decision.transitions:
        if t.kind == "host" and t.new is engine.HostState.UNREACHABLE:
            jobs.mark_host_lost(loaded.hosts[t.name], "stopped heartbeating")
    bound = _replies(cluster, decision)
    # hosts that heartbeat (maintenance included) can run a fence agent for another
    online = {
        n
        for n, h in status.hosts.items()
        if h.state in (engine.HostState.ONLINE, engine.HostState.MAINTENANCE)
    }
    with jobs.batched_dispatch():  # the jobs of one tick leave together
        planned: list[tuple[engine.Action, str, dict[str, Any], Job | None]] = []
        fresh: list[jobs.NewJob] = []
        for action in decision.actions:
            kind, steps, params = action_steps.steps_for(
                action,
                cluster=cluster,
                hosts=loaded.hosts,
                services=loaded.services,
                online=online,
            )
            service = getattr(action, "service", None)
            job = bound.pop(service, None) if service else None
            params = {**params, "action": action.id}
            if job is None:
                fresh.append(jobs.NewJob(kind, steps, params, _describe(action), action.id))
            else:
                job.params = {**job.params, **params}
                job.save(update_fields=["params"])
                jobs.attach_steps(job, steps, action_id=action.id, message=_describe(action))
            planned.append((action, kind, params, job))
        created = iter(jobs.create_jobs(fresh, cluster=cluster))  # in a few INSERTs
        entries: list[EventFields] = []
        for action, kind, params, bound_job in planned:
            job = bound_job or next(created)
            report.jobs.append(job.pk)
            entries.append(
                {
                    "actor": "engine",
                    "verb": kind,
                    "object_type": "action",
                    "object_name": action.id,
                    "cluster": cluster,
                    "result": "info",
                    "message": _describe(action),
                    "data": {"job": job.pk, **params},
                }
            )
        record_many(entries)
    for job in bound.values():  # accepted, and nothing to do
        jobs.finish_job(job, ok=True, explanation="")
    return report


#: how much each state change matters to a person (anything not listed is routine)
SEVERITIES: dict[tuple[str, str], str] = {
    ("host", engine.HostState.UNREACHABLE.value): Severity.CRITICAL,
    ("host", engine.HostState.FENCING.value): Severity.ERROR,
    ("host", engine.HostState.FENCED.value): Severity.WARNING,
    ("host", engine.HostState.OFFLINE.value): Severity.WARNING,
    ("service", engine.ServiceState.FENCE.value): Severity.ERROR,
    ("service", engine.ServiceState.RECOVERING.value): Severity.ERROR,
    ("service", engine.ServiceState.WAITING.value): Severity.WARNING,
    ("service", engine.ServiceState.FAILED.value): Severity.CRITICAL,
}


def _kind(t: engine.Transition) -> str:
    return str(getattr(t.kind, "value", t.kind))


def transition_severity(t: engine.Transition) -> str:
    return SEVERITIES.get((_kind(t), t.new.value), Severity.INFO)


def transition_data(t: engine.Transition, status: engine.Status) -> dict[str, object]:
    """A state change as typed data, so incidents and alerts never parse the message."""
    kind = _kind(t)
    data: dict[str, object] = {
        "kind": kind,
        "old": t.old.value if t.old else None,
        "new": t.new.value,
        "reason": t.reason,
    }
    cause = getattr(t, "cause", "")
    if cause:  # a health check that failed ("watchdog", "panic", ...), "saved", "resume"
        data["cause"] = cause
    room = getattr(t, "room", None)
    if room is not None:  # stopped to make room: for whom, then saved or shut down (and why)
        data["room"] = {
            "host": room.host,
            "for": room.for_service,
            "priority": room.priority,
            "own_priority": room.own_priority,
            "save": room.save,
            "saved": room.saved,
            "not_saved": room.not_saved,
        }
    if kind == "host":
        data["host"] = t.name
    else:
        ss = status.services.get(t.name)
        data["service"] = t.name
        if ss is not None:
            data["host"] = ss.node
            data["target"] = ss.target
            data["suspects"] = list(ss.suspects)
    return data


def _describe(action: engine.Action) -> str:
    if isinstance(action, engine.Fence):
        return f"fence {action.host}"
    if isinstance(action, engine.FenceStatus):
        return f"ask the fence device of {action.host} whether it is off"
    if isinstance(action, engine.Start | engine.Stop):
        verb = "start" if isinstance(action, engine.Start) else "stop"
        return f"{verb} {action.service} on {action.host}"
    verb = "migrate" if isinstance(action, engine.Migrate) else "relocate"
    return f"{verb} {action.service}: {action.source} -> {action.target}"


def _replies(cluster: Cluster, decision: engine.Decision) -> dict[str, Job]:
    """Record the engine's answers to people's commands; return accepted ones by service."""
    bound: dict[str, Job] = {}
    by_id = {
        c.command_id: c
        for c in PendingCommand.objects.filter(
            cluster=cluster, command_id__in=[r.command_id for r in decision.replies]
        ).select_related("job")
    }
    for reply in decision.replies:
        command = by_id.get(reply.command_id)
        if command is None:
            continue
        command.outcome, command.reason = reply.outcome.value, reply.reason
        command.save(update_fields=["outcome", "reason"])
        if reply.outcome is engine.ReplyOutcome.REFUSED:
            jobs.finish_job(command.job, ok=False, explanation=f"refused: {reply.reason}")
            record(
                actor=command.actor,
                verb=command.kind,
                object_type="vmservice",
                object_name=command.service,
                cluster=cluster,
                result="refused",
                message=reply.reason,
                data={"code": reply.code, "command": command.command_id},
            )
        elif reply.outcome is engine.ReplyOutcome.QUEUED:
            jobs.add_event(command.job, f"queued: {reply.reason}")
        else:
            bound[command.service] = command.job
    return bound


def _or(value: int | None, kept: int) -> int:
    return kept if value is None else value


def write_changes(model: Any, changes: dict[int, dict[str, Any]]) -> int:
    """Write only what changed: `changes` maps a row's pk to its changed fields and new values.
    Rows with the same new values share one ``UPDATE ... WHERE id IN (...)`` (a mass failure
    moves thousands of services to the same state and reason), so the cost follows the number
    of distinct changes, not the cluster's size (Django's bulk_update builds a CASE per field
    and row: seconds for a few hundred rows). Returns the number of UPDATE statements."""
    groups: dict[tuple[tuple[str, Any], ...], list[int]] = {}
    for pk, values in changes.items():
        if values:
            groups.setdefault(tuple(sorted(values.items())), []).append(pk)
    for key, pks in groups.items():
        for i in range(0, len(pks), 500):  # SQLite's bound-parameter limit, with room
            model.objects.filter(pk__in=pks[i : i + 500]).update(**dict(key))
    return len(groups)


#: a host's last heartbeat time is written to the database at most this often (the engine reads
#: Redis; the database copy is for pages and for a console started afresh)
HEARTBEAT_WRITE_S = 5.0


def _write_status_pieces(
    cluster: Cluster, loaded: Loaded, status: engine.Status, tick: int
) -> None:
    """The services whose engine status changed since the previous one, one row each (all of
    them when it was stored whole); rows of services the engine forgot, deleted."""
    before = loaded.snapshot.status.services if loaded.pieces else {}
    changed = [
        n for n, s in status.services.items() if (old := before.get(n)) is not s and old != s
    ]
    gone = [n for n in before if n not in status.services]
    rows = EngineServiceStatus.objects.filter(cluster=cluster)
    if not loaded.pieces:
        rows.delete()
    for i in range(0, max(len(changed), len(gone)), 500):
        names = changed[i : i + 500] + gone[i : i + 500]
        rows.filter(name__in=names).delete()
        EngineServiceStatus.objects.bulk_create(
            EngineServiceStatus(
                cluster=cluster,
                name=n,
                status_json=service_to_json(status.services[n]),
                tick=tick,
            )
            for n in changed[i : i + 500]
        )


def _write_hosts(loaded: Loaded, status: engine.Status, now: float) -> None:
    changes: dict[int, dict[str, Any]] = {}
    for name, host in loaded.hosts.items():
        new: dict[str, Any] = {}
        hs = status.hosts.get(name)
        if hs is not None:
            new["state"] = (
                engine.HostState.MAINTENANCE.value
                if (host.maintenance and hs.state is engine.HostState.ONLINE)
                else hs.state.value
            )
            new["state_reason"] = hs.reason
        rep = loaded.reports.get(name)
        if rep is not None:
            beat = rep.beat  # decoded: a malformed value is None, kept as it was
            last = host.last_heartbeat
            if last is None or rep.received - last.timestamp() > HEARTBEAT_WRITE_S:
                new["last_heartbeat"] = _ts(rep.received)
            new["memory_total_mb"] = _or(beat.memory_total_mib, host.memory_total_mb)
            new["memory_free_mb"] = _or(beat.memory_free_mib, host.memory_free_mb)
            new["cpus"] = _or(beat.cpus, host.cpus)
            new["host_uuid"] = beat.host_uuid or host.host_uuid
            new["agent_version"] = beat.agent_version or host.agent_version
        changed = {f: v for f, v in new.items() if getattr(host, f) != v}
        for f, v in changed.items():
            setattr(host, f, v)
        if changed:
            changes[host.pk] = changed
    write_changes(Host, changes)


def _row(ss: engine.ServiceStatus) -> tuple[object, ...]:
    """What a service's database row shows of its engine status."""
    node = ss.node if ss.state in OCCUPYING else None
    return (ss.state, node, ss.desired, ss.reason, ss.target if node else None)


def _write_services(loaded: Loaded, status: engine.Status, now: float) -> None:
    """Write back the services whose row changed. With rows read afresh for this tick, by
    comparing with them; with rows kept from earlier ticks (which another process's runner
    may have written since), by what changed since the previous status (committed with the
    rows it shows, in one transaction), written whole."""
    changes: dict[int, dict[str, Any]] = {}
    since = timezone.now()
    before = loaded.snapshot.status.services
    for name, ss in status.services.items():
        service = loaded.services.get(name)
        if service is None:
            continue
        old = before.get(name)
        if not loaded.fresh and old is not None and (old is ss or _row(old) == _row(ss)):
            continue
        node = ss.node if ss.state in OCCUPYING else None
        host = loaded.hosts.get(node) if node else None
        target = loaded.hosts.get(ss.target) if ss.target and node else None
        new: dict[str, Any] = {
            "state": ss.state.value,
            "host_id": host.pk if host else None,
            "desired_state": ss.desired.value,
            "state_reason": ss.reason,
            "target_id": target.pk if target else None,
        }
        if loaded.fresh:
            changed = {f: v for f, v in new.items() if getattr(service, f) != v}
            moved = "state" in changed or "host_id" in changed
        else:
            changed = new
            moved = old is None or (old.state, old.node) != (ss.state, ss.node)
        if not changed:
            continue
        if moved:
            changed["state_since"] = since
        for f, v in changed.items():
            setattr(service, f, v)
        service.host, service.target = host, target  # the rows, not a query when next read
        changes[service.pk] = changed
    write_changes(VmService, changes)
