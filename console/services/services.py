"""Writes to failover domains and VM services (atomic, recorded in the event log)."""

from __future__ import annotations

import copy
from typing import Any

from django.db import transaction

from console.core.errors import Refused
from console.core.services import (
    actor_name,
    delete_object,
    delete_unused,
    refused,
    save_serializer,
)
from console.events.services import record
from console.services.models import FailoverDomain, FailoverDomainMember, VmService

#: A service may leave cluster control only while its guest runs nowhere.
DELETABLE_STATES = frozenset({"stopped", "disabled", "unknown", "failed"})


def save_domain(
    domain: FailoverDomain, members: list[dict[str, Any]] | None, *, actor: Any, verb: str
) -> FailoverDomain:
    """Save a domain and (when given) replace its members in one transaction."""
    with transaction.atomic():
        domain.save()
        if members is not None:
            domain.members.all().delete()
            FailoverDomainMember.objects.bulk_create(
                FailoverDomainMember(domain=domain, host=m["host"], priority=m["priority"])
                for m in members
            )
        record(
            actor=actor_name(actor),
            verb=verb,
            obj=domain,
            cluster=domain.cluster,
            data={
                "members": [
                    {"host": m["host"].name, "priority": m["priority"]} for m in members or []
                ]
            },
        )
    return domain


def join_domain(domain: FailoverDomain, host: Any, priority: int, *, actor: Any) -> FailoverDomain:
    """Make ``host`` a member of ``domain`` with ``priority`` (1 is best), its other members
    kept: the host page's offer for a host that is in no or few domains (e.g. just added)."""
    if host.cluster_id != domain.cluster_id:
        raise Refused(f"{host.name} is not in cluster {domain.cluster.name}.", field="host")
    if not 1 <= priority <= 100:
        raise Refused("The priority is a whole number from 1 (best) to 100.", field="priority")
    current = list(domain.members.select_related("host"))
    if any(m.host_id == host.pk for m in current):
        raise Refused(f"{host.name} is already a member of {domain.name}.", status=409)
    members: list[dict[str, Any]] = [{"host": m.host, "priority": m.priority} for m in current]
    members.append({"host": host, "priority": priority})
    return save_domain(domain, members, actor=actor, verb="update")


def delete_domain(domain: FailoverDomain, *, actor: Any) -> None:
    """Delete a domain, refused (409) while services use it, naming them."""
    users = sorted(domain.services.values_list("name", flat=True))
    delete_unused(
        domain,
        users,
        actor=actor,
        reason=f"used by {', '.join(users)}",
        refusal=f"Failover domain {domain.name} is used by "
        f"{'service' if len(users) == 1 else 'services'} {', '.join(users)}: "
        "move them to another domain (or none) first.",
    )


def delete_service(service: VmService, *, actor: Any) -> None:
    """Remove a service from cluster control; refused (409) while its guest may be running,
    or the guest would keep running unmanaged."""
    if service.state not in DELETABLE_STATES:
        refused(service, actor=actor, verb="delete", reason=f"{service.state}")
        raise Refused(f"{service.name} is {service.state}: disable it first, then remove it.")
    delete_object(service, actor=actor)


def save_service(writer: Any, *, actor: Any, verb: str) -> VmService:
    """Create or update a service from a validated serializer or form (the API and the page).

    A new service that the cluster would start (desired started, autostart, protected) is
    refused (409, about ``protected``) when starting it would break admission control, with
    the engine's numbers; nothing is saved then."""
    from console.operations.commands import refuse_admission

    form = hasattr(writer, "cleaned_data")
    if verb == "create":
        candidate = writer.instance if form else VmService(**writer.validated_data)
        if not form:
            candidate.clean()  # memory and vCPUs from the XML
        if candidate.desired_state == "started" and candidate.autostart:
            refuse_admission(candidate, actor=actor_name(actor), verb="create")
    elif verb == "update" and writer.instance.desired_state == "started":
        old = VmService.objects.get(pk=writer.instance.pk)
        candidate = writer.instance if form else copy.copy(writer.instance)
        if not form:
            for key, value in writer.validated_data.items():
                setattr(candidate, key, value)
        candidate.clean()
        grew = [
            f
            for f, more in (
                ("domain_xml", candidate.memory_mb > old.memory_mb),
                ("priority", candidate.priority > old.priority),
                ("protected", candidate.protected and not old.protected),
            )
            if more
        ]
        if grew:
            refuse_admission(candidate, actor=actor_name(actor), verb="update", field=grew[0])
    saved = save_serializer(writer, actor=actor, verb=verb)
    assert isinstance(saved, VmService)
    return saved


# --- dry runs: the moves an edit would cause, before it is saved ----------------------------
def preview_domain(domain: FailoverDomain, members: list[dict[str, Any]] | None) -> Any:
    """What saving `domain` (unsaved, with the edit applied) and `members` (None: unchanged)
    would make the cluster do now: ``whatif.dry_run`` on the live cluster. Nothing is saved."""
    from console import engine
    from console.ha import whatif

    original = (
        FailoverDomain.objects.filter(pk=domain.pk).values_list("name", flat=True).first()
        if domain.pk
        else None
    )
    if members is None:
        current = FailoverDomainMember.objects.filter(domain_id=domain.pk).select_related("host")
        rows = [(m.host.name, m.priority) for m in current]
    else:
        rows = [(m["host"].name, m["priority"]) for m in members]
    definition = engine.Domain(
        name=domain.name,
        members=tuple(engine.DomainMember(host, priority) for host, priority in rows),
        ordered=domain.ordered,
        restricted=domain.restricted,
        nofailback=domain.nofailback,
    )
    renamed = {original: domain.name} if original and original != domain.name else {}
    return whatif.dry_run(
        domain.cluster, domains={domain.name: definition}, renamed_domains=renamed
    )


def preview_service(service: VmService) -> Any:
    """What saving `service` (unsaved, with the edit applied) would make the cluster do now:
    where a new guest would start and what it would preempt, or the moves a changed priority,
    domain or size causes. Nothing is saved."""
    from console.ha import whatif
    from console.ha.snapshot import service_config

    original = (
        VmService.objects.filter(pk=service.pk).values_list("name", flat=True).first()
        if service.pk
        else None
    )
    cfg = service_config(service)
    return whatif.dry_run(service.cluster, services={original or service.name: cfg})
