"""What people ask of services and hosts: start, stop, enable, disable, migrate, relocate,
maintenance on/off, acknowledge a host is down.

Each returns the job that shows its progress. Service commands go to the HA engine, which
answers every one (it may still refuse in a race); the checks here give the clear answer at
once for what is already known to be impossible.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from agent import protocol
from console import engine
from console.clusters.choices import HostState
from console.clusters.models import Host
from console.core import validators
from console.core.errors import Refused
from console.core.services import actor_name
from console.events.services import record
from console.ha import rules
from console.ha.models import PendingCommand
from console.jobs import services as jobs
from console.jobs.models import Job, JobStep
from console.services.models import FailoverDomain, VmService
from console.storage import services as storage_services

log = logging.getLogger("haven.operations")
#: a person's commands of a service: the engine's own kinds
SERVICE_COMMANDS = tuple(k.value for k in engine.CommandKind)
BEST = "best"
# libvirt states in which a QEMU process exists: such a guest is running somewhere
ACTIVE_STATES = frozenset({"running", "paused", "blocked", "shutting_down", "pmsuspended"})


class OperationError(Refused):
    """A refused operation: 409 by default (the state forbids it), 400 for bad input."""


def _wake(cluster_id: int) -> None:
    if not settings.HAVEN_WAKE_ON_COMMAND:
        return

    def send() -> None:
        from console.ha.tasks import wake

        try:
            wake.delay(cluster_id)
        except Exception:  # the broker is away: the next beat tick picks the command up
            log.warning("could not wake the runner of cluster %s", cluster_id)

    transaction.on_commit(send)


def service_command(service: VmService, kind: str, *, actor: Any, host: str | None = None) -> Job:
    if kind not in SERVICE_COMMANDS:
        raise OperationError(f"Unknown operation {kind!r}.", status=400, field="operation")
    k = engine.CommandKind(kind)
    node: str | None = None
    disabled = service.desired_state == engine.Desired.DISABLED
    if k in (engine.CommandKind.MIGRATE, engine.CommandKind.RELOCATE):
        node = _check_move(service, host, live=k is engine.CommandKind.MIGRATE)
    elif k is engine.CommandKind.START and disabled:
        raise OperationError(f"{service.name} is disabled: enable it first.")
    elif k is engine.CommandKind.STOP and disabled:
        raise OperationError(f"{service.name} is disabled, so it is already stopped.")
    who = actor_name(actor)
    if k in (engine.CommandKind.START, engine.CommandKind.ENABLE):
        refuse_admission(service, actor=who, verb=kind)
    with transaction.atomic():
        command_id = f"cmd-{uuid.uuid4().hex[:16]}"
        job = jobs.create_job(
            kind,
            [],
            cluster=service.cluster,
            created_by=actor,
            params={"service": service.name, **({"target": node} if node else {})},
            message=f"{who} asked to {kind} {service.name}" + (f" on {node}" if node else ""),
        )
        PendingCommand.objects.create(
            command_id=command_id,
            cluster=service.cluster,
            kind=kind,
            service=service.name,
            node=node or "",
            job=job,
            actor=who,
        )
        record(
            actor=who,
            verb=kind,
            obj=service,
            cluster=service.cluster,
            result="info",
            message=f"requested (job {job.pk})" + (f", target {node}" if node else ""),
        )
        _wake(service.cluster_id)
    return job


def refuse_admission(
    service: VmService, *, actor: str, verb: str, field: str | None = None
) -> None:
    """Admission control (N+1): refused (409), in the event log with code ``admission``
    (an alert topic), when starting ``service`` would leave the cluster unable to restart its
    protected guests after losing its worst hosts; the engine's own words and numbers."""
    if verb == "update":
        refusal = rules.change_refusal(service.cluster, service)
    else:
        refusal = rules.start_refusal(service.cluster, service)
    if refusal is None:
        return
    what = "cannot grow" if verb == "update" else "cannot start"
    message = f"{service.name} {what}: {refusal.reason}."
    with transaction.atomic():
        record(
            actor=actor,
            verb=verb,
            obj=service if service.pk else None,
            object_type="vmservice",
            object_name=service.name,
            cluster=service.cluster,
            result="refused",
            message=refusal.reason,
            data={"code": refusal.code.value},
        )
    if field is None and verb == "create":
        field = "protected"
    raise OperationError(message, field=field, status=409)


def _check_move(service: VmService, host: str | None, *, live: bool) -> str:
    """The target host of a person's move, as the engine would accept it now, or a refusal
    with the engine's own reason (console/ha/rules.py)."""
    if not host:
        raise OperationError("Name the target host, or 'best'.", status=400, field="host")
    book, _snapshot = rules.rulebook(service.cluster)
    if host == BEST:
        busy = book.move_refusal(service.name, service.host.name if service.host else "", live)
        if busy is not None and busy.code in NOT_MOVABLE:
            raise OperationError(f"{service.name}: {busy.reason}.")
        choice = book.best_host(service.name)
        if choice is None:
            raise OperationError(f"No other host can take {service.name} now.")
        host = choice
    elif not Host.objects.filter(cluster=service.cluster, name=host).exists():
        raise OperationError(
            f"There is no host {host!r} in cluster {service.cluster.name}.",
            status=400,
            field="host",
        )
    refusal = book.move_refusal(service.name, host, live)
    if refusal is not None and refusal.code is not engine.RefusalCode.BUSY:
        raise OperationError(f"{service.name} cannot move to {host}: {refusal.reason}.")
    return host


#: refusals about the guest itself, whatever the target (for "best")
NOT_MOVABLE = frozenset(
    {
        engine.RefusalCode.DISABLED,
        engine.RefusalCode.FAILED,
        engine.RefusalCode.NOT_RUNNING,
        engine.RefusalCode.NOT_MIGRATABLE,
        engine.RefusalCode.RECOVERING,
        engine.RefusalCode.UNKNOWN_SERVICE,
    }
)


def maintenance(host: Host, on: bool, *, actor: Any) -> Job:
    """Drain the host by live migration (on), or let it take guests again (off)."""
    who = actor_name(actor)
    with transaction.atomic():
        host = Host.objects.select_for_update().get(pk=host.pk)
        if host.maintenance == on:
            raise OperationError(f"{host.name} is {'already' if on else 'not'} in maintenance.")
        host.maintenance = on
        host.save(update_fields=["maintenance"])
        verb = "maintenance-on" if on else "maintenance-off"
        what = (
            "drains its guests by live migration"
            if on
            else "takes guests again; drained guests return"
        )
        job = jobs.create_job(
            verb,
            [],
            cluster=host.cluster,
            created_by=actor,
            params={"host": host.name},
            message=f"{who}: {host.name} {what}",
        )
        job = jobs.finish_job(job, ok=True)
        record(actor=who, verb=verb, obj=host, cluster=host.cluster, message=what)
        _wake(host.cluster_id)
    return job


def acknowledge_down(host: Host, *, actor: Any) -> Job:
    """A person confirms the host is powered off (a manual fence): its guests may recover."""
    who = actor_name(actor)
    with transaction.atomic():
        host = Host.objects.select_for_update().get(pk=host.pk)
        if host.state == HostState.ONLINE:
            raise OperationError(
                f"{host.name} is online: only a silent host can be acknowledged down."
            )
        host.acknowledged_down_at, host.acknowledged_down_by = timezone.now(), who
        host.save(update_fields=["acknowledged_down_at", "acknowledged_down_by"])
        job = jobs.create_job(
            "acknowledge-down",
            [],
            cluster=host.cluster,
            created_by=actor,
            params={"host": host.name},
            message=f"{who} confirmed {host.name} is powered off",
        )
        job = jobs.finish_job(job, ok=True)
        record(
            actor=who,
            verb="acknowledge-down",
            obj=host,
            cluster=host.cluster,
            message="manual fence: the guests of this host may start elsewhere",
        )
        _wake(host.cluster_id)
        # Shared storage: the survivors' dlm waits for this fence before GFS2 goes on.
        down = host
        transaction.on_commit(lambda: storage_services.dlm_fence_ack(down, actor=actor))
    return job


def list_guests(host: Host, *, actor: Any) -> Job:
    """Ask the host's agent which guests it has defined (the job's step result lists them)."""
    return jobs.create_job(
        "list-guests",
        [jobs.StepSpec.of(host, protocol.ListGuestsArgs())],
        cluster=host.cluster,
        created_by=actor,
        params={"host": host.name},
        message=f"{actor_name(actor)} listed the guests of {host.name}",
    )


def import_guests(
    host: Host, guests: list[str], *, actor: Any, failover_domain: FailoverDomain | None = None
) -> Job:
    """Put guests already defined on a host under cluster control: their XML is read from
    the host (``dumpxml``) and kept by the console from then on."""
    if not guests:
        raise OperationError("Name at least one guest to import.", status=400, field="guests")
    for name in guests:
        try:
            validators.validate_guest_name(name)
        except ValidationError as exc:
            raise OperationError(" ".join(exc.messages), status=400, field="guests") from exc
    taken = sorted(
        VmService.objects.filter(cluster=host.cluster, name__in=guests).values_list(
            "name", flat=True
        )
    )
    if taken:
        raise OperationError(f"Already VM services: {', '.join(taken)}.", status=409)
    if failover_domain is not None and failover_domain.cluster_id != host.cluster_id:
        raise OperationError(
            "That failover domain belongs to another cluster.", status=400, field="failover_domain"
        )
    return jobs.create_job(
        "import-guests",
        [jobs.StepSpec.of(host, protocol.DumpxmlArgs(g)) for g in guests],
        cluster=host.cluster,
        created_by=actor,
        params={
            "host": host.name,
            "guests": guests,
            "failover_domain": failover_domain.pk if failover_domain else None,
        },
        message=f"{actor_name(actor)} imports {', '.join(guests)} from {host.name}",
    )


@jobs.on_step_success("dumpxml")
def _imported(step: JobStep, data: dict[str, Any]) -> None:
    """A guest's XML arrived for an import: it becomes a VM service, adopted where it runs."""
    job = step.job
    if job.kind != "import-guests" or step.host is None:
        return
    domain_id = job.params.get("failover_domain")
    service = VmService(
        cluster=step.host.cluster,
        name=data["name"],
        domain_xml=data["xml"],
        failover_domain_id=domain_id,
    )
    try:
        service.full_clean()
    except ValidationError as exc:
        jobs.add_event(
            job,
            f"{data['name']} not imported: {' '.join(exc.messages)}",
            level="error",
            host=step.host,
        )
        return
    running = data.get("state") in ACTIVE_STATES
    service.state = "started" if running else "stopped"
    service.desired_state = "started" if running else "stopped"
    service.host = step.host if running else None
    service.save()
    record(
        actor=job.created_by.get_username() if job.created_by else "console",
        verb="import",
        obj=service,
        cluster=service.cluster,
        message=f"from {step.host.name} ({'running' if running else 'shut off'})",
    )
