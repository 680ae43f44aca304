"""Build the HA engine's snapshot of one cluster from the database and the heartbeat store."""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType

from django.conf import settings

from console import engine
from console.clusters.models import Cluster, Host
from console.jobs.models import Job, JobStatus
from console.jobs.services import pending_engine_results
from console.runtime.models import EngineState, PendingCommand
from console.runtime.store import HostReport, Store
from console.services.models import FailoverDomain, VmService
from console.storage.models import VolumeGroup


def engine_settings(cluster: Cluster | None = None) -> engine.Settings:
    """The engine's settings: the console's timers, and the cluster's own policy (vCPU
    overcommit, admission control, the live rebalancer)."""
    base = engine.Settings(
        heartbeat_interval_s=settings.HAVEN_HEARTBEAT_INTERVAL_S,
        missed_heartbeats=settings.HAVEN_MISSED_HEARTBEATS,
    )
    if cluster is None:
        return base
    return replace(
        base,
        cpu_overcommit=float(cluster.cpu_overcommit),
        host_failures_to_tolerate=int(cluster.host_failures_to_tolerate),
        rebalance=bool(cluster.rebalance),
    )


@dataclass
class Loaded:
    """The snapshot and the database rows it was built from (the runner writes back to them)."""

    snapshot: engine.Snapshot
    state: EngineState
    hosts: dict[str, Host]
    services: dict[str, VmService]
    reports: dict[str, HostReport]
    result_jobs: list[Job]
    commands: list[PendingCommand]
    #: the tick's time: when the heartbeats were read (unless the caller gave one)
    now: float


def _observation(
    host: Host,
    report: HostReport | None,
    fence_hosts: set[int],
    shared_storage: bool = False,
    shutting_down: bool = False,
) -> engine.HostObservation:
    hb = report.heartbeat if report else {}
    ack = host.acknowledged_down_at.timestamp() if host.acknowledged_down_at else None
    return engine.HostObservation(
        name=host.name,
        last_heartbeat=report.received if report else None,
        running=report.running if report else frozenset(),
        memory_total_mb=int(hb.get("memory_total_mib") or host.memory_total_mb),
        memory_free_mb=int(hb.get("memory_free_mib") or host.memory_free_mb),
        cpus=int(hb.get("cpus") or host.cpus or 1),
        cpu_overcommit=host.cpu_overcommit,
        maintenance=host.maintenance,
        shutting_down=shutting_down,
        fence_device=host.pk in fence_hosts,
        shared_storage=shared_storage,
        acknowledged_down_at=ack,
        unhealthy=MappingProxyType(_unhealthy(report)),
    )


_CHECKS = {c.value: c for c in engine.HealthCheck}


def _unhealthy(report: HostReport | None) -> dict[str, engine.HealthFailure]:
    """The host's failed health checks, as the engine reads them (unknown checks dropped)."""
    if report is None:
        return {}
    return {
        guest: engine.HealthFailure(_CHECKS[check], detail)
        for guest, (check, detail) in report.unhealthy.items()
        if check in _CHECKS
    }


def service_config(service: VmService) -> engine.ServiceConfig:
    return engine.ServiceConfig(
        name=service.name,
        desired=engine.Desired(service.desired_state),
        domain=service.failover_domain.name if service.failover_domain else None,
        recovery=engine.Recovery(service.recovery),
        max_restarts=service.max_restarts,
        restart_window_s=float(service.restart_window_s),
        max_relocations=service.max_relocations,
        memory_mb=service.memory_mb,
        cpus=service.vcpus,
        priority=service.priority,
        migratable=service.migratable,
        autostart=service.autostart,
        saveable=not service.save_refusal(),
        protected=service.protected,
        node=service.host.name if service.host and service.state == "started" else None,
    )


def domain_of(domain: FailoverDomain) -> engine.Domain:
    return engine.Domain(
        name=domain.name,
        members=tuple(engine.DomainMember(m.host.name, m.priority) for m in domain.members.all()),
        ordered=domain.ordered,
        restricted=domain.restricted,
        nofailback=domain.nofailback,
    )


def action_result(job: Job) -> engine.ActionResult:
    """A finished engine job as the engine reads it; a stop to make room says whether the
    guest was saved (managed save) or, when libvirt refused, shut down and why."""
    ok = job.status == JobStatus.SUCCEEDED
    result = engine.ActionResult(job.action_id, ok, job.explanation)
    if not ok or job.kind != "stop" or job.params.get("reason") != "preempt":
        return result
    step = job.steps.filter(kind="shutdown").order_by("-seq").first()
    data = step.result if step is not None else {}
    if data.get("how") == "saved":
        return engine.ActionResult(job.action_id, True, job.explanation, saved=True)
    if data.get("save_error"):
        why = f"managed save failed ({data['save_error']}): shut down instead"
        return engine.ActionResult(job.action_id, True, why)
    if job.params.get("not_saved"):
        return engine.ActionResult(job.action_id, True, f"not saved: {job.params['not_saved']}")
    return result


def load(cluster: Cluster, store: Store, now: float | None = None) -> Loaded:
    """`now`: the tick's time; by default the moment the heartbeats are read, so that a slow
    load (database locks, a busy worker) never makes hosts look older than they are."""
    hosts = {h.name: h for h in Host.objects.filter(cluster=cluster)}
    fence_hosts = set(cluster.fence_devices.values_list("host_id", flat=True))
    # A clustered VG: every host joined its dlm lockspace (vg_lockstart on each), so a silent
    # host blocks the others' GFS2 until it is fenced.
    shared_storage = VolumeGroup.objects.filter(cluster=cluster, clustered=True).exists()
    now = store.clock() if now is None else now
    reports = store.reports(sorted(hosts))
    shutdowns = store.shutting_down(reports, now)  # announced clean shutdowns (drained)
    # The "no data" signal, read after the heartbeats (a Redis restarted between the two reads
    # is seen as a restart): since when the view of heartbeats is continuous (afresh in a new
    # runner process and after Redis restarted or lost its data), and how far behind the
    # drainer runs.
    view_since, ingest_lag_s = store.view_since(now), store.ingest_lag(now)
    services = {
        s.name: s
        for s in VmService.objects.filter(cluster=cluster).select_related("failover_domain", "host")
    }
    domains = {
        d.name: domain_of(d)
        for d in FailoverDomain.objects.filter(cluster=cluster).prefetch_related("members__host")
    }
    state, _ = EngineState.objects.get_or_create(cluster=cluster)
    status = engine.Status.from_json(state.status_json) if state.status_json else engine.Status()
    result_jobs = pending_engine_results(cluster)
    commands = list(PendingCommand.objects.filter(cluster=cluster, delivered=False))
    snapshot = engine.Snapshot(
        hosts=MappingProxyType(
            {
                n: _observation(h, reports.get(n), fence_hosts, shared_storage, n in shutdowns)
                for n, h in sorted(hosts.items())
            }
        ),
        services=MappingProxyType({n: service_config(s) for n, s in sorted(services.items())}),
        domains=MappingProxyType(domains),
        results=tuple(action_result(j) for j in result_jobs),
        commands=tuple(
            engine.Command(c.command_id, engine.CommandKind(c.kind), c.service, c.node or None)
            for c in commands
        ),
        status=status,
        settings=engine_settings(cluster),
        id_prefix=f"c{cluster.pk}-",
        view_since=view_since,
        ingest_lag_s=ingest_lag_s,
    )
    return Loaded(snapshot, state, hosts, services, reports, result_jobs, commands, now)
