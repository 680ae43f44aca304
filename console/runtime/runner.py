"""The HA runner: one at a time per cluster, it builds the snapshot, calls the engine's
``tick``, stores the status and turns actions into jobs, all in one transaction.

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
import logging
import time
from dataclasses import dataclass, field

import redis
from django.db import transaction
from django.utils import timezone

from console import engine
from console.clusters.models import Cluster, Host
from console.clusters.stream import publish_change
from console.engine.tick import OCCUPYING
from console.events.models import Severity
from console.events.services import record
from console.jobs import services as jobs
from console.jobs.models import Job
from console.monitoring import ticks
from console.runtime import actions as action_steps
from console.runtime.models import EngineState, PendingCommand
from console.runtime.snapshot import Loaded, load
from console.runtime.store import LOCK_TTL_S, Lease, LockLost, Store
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


def run(cluster_id: int, store: Store | None = None) -> list[TickReport]:
    """Run the engine for one cluster unless another runner does; returns what it did."""
    store = store or _shared()
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
    from console.runtime.tasks import store

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
    started = time.perf_counter()
    with transaction.atomic():
        cluster = Cluster.objects.get(pk=cluster_id)
        loaded = load(cluster, store, now)
        decision = engine.tick(loaded.snapshot, loaded.now)
        report = _apply(cluster, loaded, decision, loaded.now)
        if lease is not None:
            lease.check()
    for action in report.actions:  # committed: what was queued for a fenced host never runs
        if isinstance(action, engine.Fence):
            try:
                store.drop_commands(action.host)
            except redis.RedisError as exc:  # the commands still expire (HAVEN_COMMAND_TTL_S)
                log.warning("could not drop the commands queued for %s: %s", action.host, exc)
    if decision.transitions or decision.actions:
        publish_change(store, cluster_id)  # open cluster pages refresh now (SSE)
    report.duration_s = time.perf_counter() - started
    ticks.record_tick(store, cluster_id, report.duration_s)
    return report


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
    status_json = status.to_json()
    written = EngineState.objects.filter(pk=state.pk, ticks=state.ticks).update(
        status_json=status_json,
        alarm=status.alarm,
        ticks=state.ticks + 1,
        updated=timezone.now(),
    )
    if written != 1:
        raise LockLost(f"cluster {cluster.name}: another runner decided since this snapshot")
    state.status_json, state.alarm, state.ticks = status_json, status.alarm, state.ticks + 1
    jobs.mark_engine_notified([j.pk for j in loaded.result_jobs])
    PendingCommand.objects.filter(pk__in=[c.pk for c in loaded.commands]).update(delivered=True)

    _write_hosts(loaded, status, now)
    _write_services(loaded, status, now)
    for t in decision.transitions:
        record(
            actor="engine",
            verb=f"{t.kind}-state",
            object_type=t.kind,
            object_name=t.name,
            cluster=cluster,
            result="info",
            severity=transition_severity(t),
            message=f"{t.old.value if t.old else 'new'} -> {t.new.value}: {t.reason}",
            data=transition_data(t, status),
        )
        if t.kind == "host" and t.new is engine.HostState.UNREACHABLE:
            jobs.mark_host_lost(loaded.hosts[t.name], "stopped heartbeating")
    bound = _replies(cluster, decision)
    # hosts that heartbeat (maintenance included) can run a fence agent for another
    online = {
        n
        for n, h in status.hosts.items()
        if h.state in (engine.HostState.ONLINE, engine.HostState.MAINTENANCE)
    }
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
            job = jobs.create_job(
                kind,
                steps,
                cluster=cluster,
                params=params,
                action_id=action.id,
                message=_describe(action),
            )
        else:
            job.params = {**job.params, **params}
            job.save(update_fields=["params"])
            jobs.attach_steps(job, steps, action_id=action.id, message=_describe(action))
        report.jobs.append(job.pk)
        record(
            actor="engine",
            verb=kind,
            object_type="action",
            object_name=action.id,
            cluster=cluster,
            result="info",
            message=_describe(action),
            data={"job": job.pk, **params},
        )
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
    if cause:  # a health check that failed ("watchdog", "panic", ...), or "saved"
        data["cause"] = cause
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


def _write_hosts(loaded: Loaded, status: engine.Status, now: float) -> None:
    changed: list[Host] = []
    fields = [
        "state",
        "state_reason",
        "last_heartbeat",
        "memory_total_mb",
        "memory_free_mb",
        "cpus",
        "host_uuid",
        "agent_version",
    ]
    for name, host in loaded.hosts.items():
        before = [getattr(host, f) for f in fields]
        hs = status.hosts.get(name)
        if hs is not None:
            host.state = (
                engine.HostState.MAINTENANCE.value
                if (host.maintenance and hs.state is engine.HostState.ONLINE)
                else hs.state.value
            )
            host.state_reason = hs.reason
        rep = loaded.reports.get(name)
        if rep is not None:
            hb = rep.heartbeat
            # Only write a new heartbeat time every few seconds: the engine reads Redis.
            if host.last_heartbeat is None or rep.received - host.last_heartbeat.timestamp() > 5:
                host.last_heartbeat = _ts(rep.received)
            host.memory_total_mb = int(hb.get("memory_total_mib") or 0)
            host.memory_free_mb = int(hb.get("memory_free_mib") or 0)
            host.cpus = int(hb.get("cpus") or 0)
            host.host_uuid = str(hb.get("host_uuid") or host.host_uuid)
            host.agent_version = str(hb.get("agent_version") or host.agent_version)
        if [getattr(host, f) for f in fields] != before:
            changed.append(host)
    if changed:
        Host.objects.bulk_update(changed, fields)


def _write_services(loaded: Loaded, status: engine.Status, now: float) -> None:
    changed: list[VmService] = []
    for name, service in loaded.services.items():
        ss = status.services.get(name)
        if ss is None:
            continue
        node = ss.node if ss.state in OCCUPYING else None
        host = loaded.hosts.get(node) if node else None
        target = loaded.hosts.get(ss.target) if ss.target and node else None
        new = (
            ss.state.value,
            host.pk if host else None,
            ss.desired.value,
            ss.reason,
            target.pk if target else None,
        )
        if new != (
            service.state,
            service.host_id,
            service.desired_state,
            service.state_reason,
            service.target_id,
        ):
            if (service.state, service.host_id) != new[:2]:
                service.state_since = timezone.now()
            service.state, service.host, service.desired_state = ss.state.value, host, new[2]
            service.state_reason, service.target = ss.reason, target
            changed.append(service)
    if changed:
        VmService.objects.bulk_update(
            changed, ["state", "host", "desired_state", "state_since", "state_reason", "target"]
        )
