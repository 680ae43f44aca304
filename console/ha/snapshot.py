"""Build the HA engine's snapshot of one cluster from the database and the heartbeat store.

The runner builds it every second. At 10,000 services most of the cost was reading the same
configuration again, so the runner's `load(..., cached=True)` keeps the services, their engine
configs and the failover domains in memory between ticks (per process and cluster) and reads
them again only when they may have changed: the cluster's `EngineState.config_version` moved
(bumped in the writer's own transaction by every save or delete of a host, fence device,
service, failover domain or member: console/ha/apps.py), the newest service's id moved
(a bulk create, which sends no signal) or the hosts' names changed. A write no signal sees
(``QuerySet.update``, another program on the database) is caught by a rolling re-read: each
tick reads again the next slice of the services by id, sized so that every row and the
domains are read again within `CONFIG_MAX_AGE_S` (at 10,240 services a whole read cost a tick
0.4-1 s of CPU once a minute, the slowest ticks of the fleet bench; a slice costs a few ms).
Hosts (128 rows, where maintenance and acknowledgements change) are read every tick, and so is
everything that is not configuration: heartbeats, the engine's status, results, commands.
The engine's status is parsed again only when another process ticked since this one did.

Rows the runner itself writes (a service's state, host, reason) are not re-read: the runner
writes back from the engine's status (what changed since the previous status), not by
comparing with cached rows (console/ha/runner.py).
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, replace
from time import monotonic
from types import MappingProxyType

from django.conf import settings

from agent.protocol import Heartbeat
from console import engine
from console.clusters.models import Cluster, Host
from console.engine.status import assemble, service_from_json
from console.ha.models import EngineServiceStatus, EngineState, PendingCommand
from console.ha.store import HostReport, Store
from console.jobs.models import Job, JobStatus
from console.jobs.services import pending_engine_results
from console.services import domainxml
from console.services.models import FailoverDomain, VmService
from console.storage.models import Filesystem, VolumeGroup


def engine_settings(cluster: Cluster | None = None) -> engine.Settings:
    """The engine's settings: the console's timers, and the cluster's own policy (vCPU
    overcommit, admission control, the live rebalancer)."""
    base = engine.Settings(
        heartbeat_interval_s=settings.HAVEN_HEARTBEAT_INTERVAL_S,
        missed_heartbeats=settings.HAVEN_MISSED_HEARTBEATS,
        late_heartbeats=settings.HAVEN_LATE_HEARTBEATS,
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
    #: the service rows were read from the database for this snapshot (not kept from before)
    fresh: bool = True
    #: the status is stored in pieces (else whole, as an older console wrote it)
    pieces: bool = True


def _observation(
    host: Host,
    report: HostReport | None,
    fence_hosts: set[int],
    shared_storage: bool = False,
    shutting_down: bool = False,
) -> engine.HostObservation:
    beat = report.beat if report else None
    mounts = beat.shared_mounts if beat else None
    ack = host.acknowledged_down_at.timestamp() if host.acknowledged_down_at else None

    def reported(value: int | None, stored: int) -> int:
        """What the heartbeat says, else what the database last kept (MiB, counts)."""
        return stored if value is None else value

    return engine.HostObservation(
        name=host.name,
        last_heartbeat=report.received if report else None,
        running=report.running if report else frozenset(),
        memory_total_mb=reported(beat.memory_total_mib if beat else None, host.memory_total_mb),
        memory_free_mb=reported(beat.memory_free_mib if beat else None, host.memory_free_mb),
        cpus=reported(beat.cpus if beat else None, host.cpus) or 1,
        cpu_overcommit=host.cpu_overcommit,
        maintenance=host.maintenance,
        shutting_down=shutting_down,
        fence_device=host.pk in fence_hosts,
        shared_storage=shared_storage and in_cluster_stack(beat),
        acknowledged_down_at=ack,
        unhealthy=MappingProxyType(_unhealthy(report)),
        mounted=None if mounts is None else frozenset(mounts),
    )


def in_cluster_stack(beat: Heartbeat | None) -> bool:
    """Whether a host of a cluster with a clustered VG is in its dlm lockspace, as far as the
    console can tell: yes, unless its latest heartbeat says corosync is not installed there
    (``cluster`` null; dlm and lvmlockd run on corosync). Installed but not answering (stopped
    or hung: the agent cannot tell which) counts as in, and so does a host not heard from at
    all: a silent host wrongly taken for out would block the others' GFS2 for good."""
    return beat is None or beat.cluster is not None


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
    devices = domainxml.devices(service.domain_xml)
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
        saveable=not service.save_refusal(devices),
        protected=service.protected,
        node=service.host.name if service.host and service.state == "started" else None,
        disks=devices.disks,
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


#: every row of the configuration kept between ticks is read again at least this often,
#: whatever its version (a slice each tick: `_reread_slice`)
CONFIG_MAX_AGE_S = 60.0


@dataclass
class _Config:
    """A cluster's configuration as the runner keeps it between ticks."""

    key: tuple[object, ...]
    services: dict[str, VmService]
    configs: dict[str, engine.ServiceConfig]
    domains: dict[str, engine.Domain]
    #: the mount points of the cluster's shared file systems (read with the domains)
    mounts: frozenset[str]
    #: the rolling re-read: the last service id read again, and when the previous slice was
    cursor: int = 0
    sliced_at: float = 0.0


_configs: dict[int, _Config] = {}
_statuses: dict[int, tuple[int, engine.Status]] = {}


def forget(cluster_id: int | None = None) -> None:
    """Drop what is kept between ticks for one cluster (a tick rolled back) or all (tests)."""
    if cluster_id is None:
        _configs.clear()
        _statuses.clear()
    else:
        _configs.pop(cluster_id, None)
        _statuses.pop(cluster_id, None)


def remember_status(cluster_id: int, ticks: int, status: engine.Status) -> None:
    """The status this process just committed as tick number `ticks`: the next tick here
    reuses it unless another process ticked in between."""
    _statuses[cluster_id] = (ticks, status)


def _read_config(
    cluster: Cluster, hosts_by_pk: dict[int, Host], key: tuple[object, ...]
) -> _Config:
    services = {}
    for s in VmService.objects.filter(cluster=cluster).select_related("failover_domain"):
        s.host = hosts_by_pk.get(s.host_id) if s.host_id else None
        s.target = hosts_by_pk.get(s.target_id) if s.target_id else None
        services[s.name] = s
    domains = _domains(cluster)
    configs = {n: service_config(s) for n, s in sorted(services.items())}
    return _Config(key, services, configs, domains, _mounts(cluster), sliced_at=monotonic())


#: from this many services, a process that read its configuration whole freezes its heap
#: (`settle_heap`); below, a full garbage collection is cheap anyway
HEAP_FREEZE_FROM = 1000


def settle_heap() -> None:
    """After reading a large configuration whole: collect once with nothing frozen (what an
    earlier freeze held and has since died goes), then freeze what is alive, the configuration
    with it, out of the garbage collector's full collections. At 10,240 services those scanned
    it again every few ticks, 150-340 ms each (the fleet bench's slowest ticks). Rows that die
    later are freed by their reference counts as ever; the kept rows hold no cycles."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


_SERVICE_COLUMNS = tuple(f.attname for f in VmService._meta.concrete_fields)


def _same_row(kept: VmService, read: VmService) -> bool:
    """Whether a row read again holds what the kept one does, column by column (a new object
    for an unchanged row would leave the frozen heap little by little: after a minute of
    slices the full collections scanned every row again)."""
    return all(getattr(kept, c) == getattr(read, c) for c in _SERVICE_COLUMNS)


def _domains(cluster: Cluster) -> dict[str, engine.Domain]:
    return {
        d.name: domain_of(d)
        for d in FailoverDomain.objects.filter(cluster=cluster).prefetch_related("members__host")
    }


def _mounts(cluster: Cluster) -> frozenset[str]:
    return frozenset(
        Filesystem.objects.filter(logical_volume__volume_group__cluster=cluster).values_list(
            "mount_point", flat=True
        )
    )


def _reread_slice(cluster: Cluster, hosts_by_pk: dict[int, Host], kept: _Config) -> _Config:
    """The kept configuration with the next slice of its services read again (ids after
    `kept.cursor`, as many as keep every row within `CONFIG_MAX_AGE_S` of its last read);
    past the last id, the domains too, and the next slice starts from the first id again.
    New dicts (an earlier snapshot keeps what it saw); unchanged configs stay the same objects."""
    at = monotonic()
    share = (at - kept.sliced_at) / CONFIG_MAX_AGE_S
    count = max(1, math.ceil(len(kept.services) * share))
    rows = list(
        VmService.objects.filter(cluster=cluster, id__gt=kept.cursor)
        .select_related("failover_domain")
        .order_by("id")[:count]
    )
    wrapped = len(rows) < count
    upto = math.inf if wrapped else rows[-1].id
    services = {
        n: s for n, s in kept.services.items() if not (kept.cursor < s.pk <= upto)
    }  # a row in the slice's range that is gone, or renamed, goes
    configs = {n: c for n, c in kept.configs.items() if n in services}
    for row in rows:
        old = kept.services.get(row.name)
        if old is not None and _same_row(old, row):
            services[row.name] = old  # the kept objects (frozen: `settle_heap`) stay
            configs[row.name] = kept.configs[row.name]
            continue
        row.host = hosts_by_pk.get(row.host_id) if row.host_id else None
        row.target = hosts_by_pk.get(row.target_id) if row.target_id else None
        services[row.name] = row
        config, before = service_config(row), kept.configs.get(row.name)
        configs[row.name] = before if before == config else config
    domains = _domains(cluster) if wrapped else kept.domains
    mounts = _mounts(cluster) if wrapped else kept.mounts
    cursor = 0 if wrapped else int(rows[-1].id)
    return _Config(kept.key, services, configs, domains, mounts, cursor, at)


def load(
    cluster: Cluster, store: Store, now: float | None = None, *, cached: bool = False
) -> Loaded:
    """`now`: the tick's time; by default the moment the heartbeats are read, so that a slow
    load (database locks, a busy worker) never makes hosts look older than they are.
    `cached`: keep the configuration and the status between calls (the runner, and the pages'
    rulebook, what-if and policy; see the module's doc)."""
    state, _ = EngineState.objects.get_or_create(cluster=cluster)
    hosts = {h.name: h for h in Host.objects.filter(cluster=cluster)}
    fence_hosts = set(cluster.fence_devices.values_list("host_id", flat=True))
    hosts_by_pk = {h.pk: h for h in hosts.values()}
    # a bulk create sends no signal: the newest service's id tells (deletes do send one)
    top = VmService.objects.filter(cluster=cluster).order_by("-id").values_list("id").first()
    key = (cluster.created, state.config_version, top, *sorted(hosts))
    kept = _configs.get(cluster.pk) if cached else None
    fresh = kept is None or kept.key != key
    if kept is None or fresh:
        kept = _read_config(cluster, hosts_by_pk, key)
    else:
        kept = _reread_slice(cluster, hosts_by_pk, kept)
    if cached:
        _configs[cluster.pk] = kept
    # A clustered VG: every host in the cluster stack joined its dlm lockspace (vg_lockstart
    # on each), so a silent one blocks the others' GFS2 until it is fenced (`in_cluster_stack`).
    shared_storage = VolumeGroup.objects.filter(cluster=cluster, clustered=True).exists()
    now = store.clock() if now is None else now
    # The heartbeats and the drainer's progress in one round trip. Then the "no data" signal,
    # read after the heartbeats (a Redis restarted between the two reads is seen as a
    # restart): since when the view of heartbeats is continuous (afresh in a new runner
    # process and after Redis restarted or lost its data).
    reports, ingest = store.view(sorted(hosts), now)
    # announced clean shutdowns (drained), and hosts being removed with their agent
    # uninstalled over SSH (console/operations/membership.py marks them): silent meanwhile, they
    # leave the cluster stack cleanly and are not to be fenced
    shutdowns = store.shutting_down(reports, now)
    view_since = store.view_since(now)
    status, pieces = _status(state, _statuses.get(cluster.pk) if cached else None)
    if cached and pieces:
        _statuses[cluster.pk] = (state.ticks, status)  # the next read: only what changed since
    result_jobs = pending_engine_results(cluster)
    commands = list(PendingCommand.objects.filter(cluster=cluster, delivered=False))
    snapshot = engine.Snapshot(
        hosts=MappingProxyType(
            {
                n: _observation(h, reports.get(n), fence_hosts, shared_storage, n in shutdowns)
                for n, h in sorted(hosts.items())
            }
        ),
        services=MappingProxyType(kept.configs),
        domains=MappingProxyType(kept.domains),
        results=tuple(action_result(j) for j in result_jobs),
        commands=tuple(
            engine.Command(c.command_id, engine.CommandKind(c.kind), c.service, c.node or None)
            for c in commands
        ),
        status=status,
        settings=engine_settings(cluster),
        id_prefix=f"c{cluster.pk}-",
        view_since=view_since,
        ingest_lag_s=ingest.lag_s,
        shared_mounts=kept.mounts,
    )
    return Loaded(
        snapshot, state, hosts, kept.services, reports, result_jobs, commands, now, fresh, pieces
    )


def _status(
    state: EngineState, kept: tuple[int, engine.Status] | None
) -> tuple[engine.Status, bool]:
    """The engine's status as of `state` and whether it is stored in pieces (a header in
    `state.status_json`, one `EngineServiceStatus` row per service) rather than whole (as
    before; the runner's next write splits it). `kept`: the status this process committed
    last, with its tick: reused as it is when no other process ticked since, else updated with
    the rows written after it."""
    if kept is not None and kept[0] == state.ticks:
        return kept[1], True
    if not state.status_json:
        return engine.Status(), True
    header = engine.Status.from_json(state.status_json)
    if header.services:
        return header, False  # stored whole
    rows = EngineServiceStatus.objects.filter(cluster_id=state.cluster_id)
    services: dict[str, engine.ServiceStatus] = {}
    since = kept[0] if kept is not None and kept[0] < state.ticks else None
    if kept is not None and since is not None:
        services = dict(kept[1].services)
        rows = rows.filter(tick__gt=since)
    for name, text in rows.values_list("name", "status_json"):
        services[name] = service_from_json(text)
    if since is not None:
        count = EngineServiceStatus.objects.filter(cluster_id=state.cluster_id).count()
        if count != len(services):  # some were removed since: read them all
            return _status(state, None)
    return assemble(header, dict(sorted(services.items()))), True


def stored_status(cluster_id: int) -> engine.Status:
    """The engine's status as the last tick committed it (whole, whichever way it is stored):
    for readers outside the runner, e.g. "does any guest run on this host?"."""
    state = EngineState.objects.filter(cluster_id=cluster_id).first()
    return engine.Status() if state is None else _status(state, None)[0]
