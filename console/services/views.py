"""Failover domains and VM services: lists, forms, and the service operations (start, stop,
enable, disable, relocate, migrate) — all writes through the services layer."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.db.models import Count, Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from console.clusters.models import Cluster, Host
from console.core.errors import Conflict, Refused
from console.core.views import role_required
from console.jobs.models import Job, StepStatus
from console.operations import commands as operations
from console.operations import rules
from console.services import services as domain_services
from console.services.forms import DOMAIN_HELP, FailoverDomainForm, ImportGuestForm, VmServiceForm
from console.services.models import FailoverDomain, FailoverDomainMember, VmService

OPERATIONS = ("start", "stop", "enable", "disable", "relocate")


# --- failover domains -----------------------------------------------------------------------
DOMAIN_GUESTS_SHOWN = 10


@role_required()
def domain_list(request: HttpRequest, pk: int) -> HttpResponse:
    cluster = get_object_or_404(Cluster, pk=pk)
    # each domain's first guests by name and how many it has (10,000 guests are not listed:
    # "and N more" links to the service list filtered by the domain)
    first = VmService.objects.only("id", "name", "failover_domain_id").order_by("name")
    domains = list(
        FailoverDomain.objects.filter(cluster=cluster)
        .annotate(used_by=Count("services"))
        .prefetch_related(
            Prefetch("members", queryset=FailoverDomainMember.objects.select_related("host")),
            Prefetch("services", queryset=first[:DOMAIN_GUESTS_SHOWN], to_attr="first_guests"),
        )
    )
    for d in domains:
        d.more_guests = d.used_by - len(d.first_guests)  # type: ignore[attr-defined]
    return render(
        request,
        "services/domain_list.html",
        {"cluster": cluster, "domains": domains, "help": DOMAIN_HELP, "tab": "domains"},
    )


@role_required(read="admin")
def domain_edit(request: HttpRequest, pk: int, domain_pk: int | None = None) -> HttpResponse:
    cluster = get_object_or_404(Cluster, pk=pk)
    domain = get_object_or_404(FailoverDomain, pk=domain_pk, cluster=cluster) if domain_pk else None
    form = FailoverDomainForm(
        request.POST if request.method == "POST" else None, instance=domain, cluster=cluster
    )
    preview = None
    if form.is_bound and form.is_valid():
        if "dry_run" in request.POST:  # show the moves it would cause; save nothing
            preview = domain_services.preview_domain(form.save(commit=False), form.members())
        else:
            saved = domain_services.save_domain(
                form.save(commit=False),
                form.members(),
                actor=request.user,
                verb="update" if domain else "create",
            )
            messages.success(request, f"Failover domain {saved.name} saved.")
            return redirect("services:domains", cluster.pk)
    return render(
        request,
        "services/domain_form.html",
        {
            "cluster": cluster,
            "form": form,
            "domain": domain,
            "preview": preview,
            "title": f"Edit failover domain {domain.name}" if domain else "New failover domain",
        },
    )


@role_required(read="admin")
def domain_delete(request: HttpRequest, pk: int, domain_pk: int) -> HttpResponse:
    cluster = get_object_or_404(Cluster, pk=pk)
    domain = get_object_or_404(FailoverDomain, pk=domain_pk, cluster=cluster)
    error = ""
    if request.method == "POST":
        try:
            domain_services.delete_domain(domain, actor=request.user)
        except Conflict as exc:
            error = str(exc.detail)
        else:
            messages.success(request, f"Failover domain {domain.name} deleted.")
            return redirect("services:domains", cluster.pk)
    users = list(domain.services.values_list("name", flat=True))
    return render(
        request,
        "generic/confirm_delete.html",
        {
            "cluster": cluster,
            "object": domain.name,
            "what": "failover domain",
            "error": error,
            "consequence": (
                f"Used by {', '.join(users)}: deleting it will be refused."
                if users
                else "No service uses it."
            ),
            "cancel": reverse("services:domains", args=[cluster.pk]),
        },
        status=409 if error else 200,
    )


# --- VM services ----------------------------------------------------------------------------
@role_required(read="admin")
def service_edit(request: HttpRequest, pk: int, service_pk: int | None = None) -> HttpResponse:
    cluster = get_object_or_404(Cluster, pk=pk)
    service = get_object_or_404(VmService, pk=service_pk, cluster=cluster) if service_pk else None
    form = VmServiceForm(
        request.POST if request.method == "POST" else None,
        request.FILES if request.method == "POST" else None,
        instance=service,
        cluster=cluster,
    )
    preview = None
    if form.is_bound and form.is_valid():
        if "dry_run" in request.POST:  # show the moves it would cause; save nothing
            preview = domain_services.preview_service(form.instance)
        else:
            try:
                domain_services.save_service(
                    form, actor=request.user, verb="update" if service else "create"
                )
            except Refused as exc:
                form.add_error(exc.field if exc.field in form.fields else None, exc.message)
            else:
                messages.success(
                    request,
                    f"Service {form.instance.name} saved."
                    + ("" if service else " The cluster starts it on the best allowed host."),
                )
                return redirect("clusters:detail", cluster.pk)
    return render(
        request,
        "services/service_form.html",
        {
            "cluster": cluster,
            "form": form,
            "service": service,
            "preview": preview,
            "title": f"Edit service {service.name}" if service else "New VM service",
        },
    )


@role_required(read="admin")
def service_delete(request: HttpRequest, pk: int, service_pk: int) -> HttpResponse:
    cluster = get_object_or_404(Cluster, pk=pk)
    service = get_object_or_404(VmService, pk=service_pk, cluster=cluster)
    error = ""
    if request.method == "POST":
        try:
            domain_services.delete_service(service, actor=request.user)
        except Refused as exc:
            error = exc.message
        else:
            messages.success(request, f"Service {service.name} removed from the cluster.")
            return redirect("clusters:detail", cluster.pk)
    return render(
        request,
        "generic/confirm_delete.html",
        {
            "cluster": cluster,
            "object": service.name,
            "what": "VM service",
            "error": error,
            "consequence": "The cluster stops managing this guest. The guest's definition "
            "stays on the hosts.",
            "cancel": reverse("clusters:detail", args=[cluster.pk]),
        },
        status=409 if error else 200,
    )


@role_required(read="admin")
def service_import(request: HttpRequest, pk: int) -> HttpResponse:
    """Guests already defined on a host: list them (a job on its agent), then import the
    chosen ones; their XML is read on the host and they are adopted where they run."""
    cluster = get_object_or_404(Cluster, pk=pk)
    form = ImportGuestForm(request.POST or request.GET or None, cluster=cluster)
    job = Job.objects.filter(pk=request.GET.get("job") or 0, cluster=cluster).first()
    error = ""
    if request.method == "POST" and form.is_valid():
        host: Host = form.cleaned_data["host"]
        chosen = request.POST.getlist("guests")
        try:
            if request.POST.get("step") == "import":
                job = operations.import_guests(
                    host, chosen, actor=request.user, failover_domain=form.cleaned_data["domain"]
                )
                return redirect("jobs:detail", job.pk)
            job = operations.list_guests(host, actor=request.user)
        except operations.OperationError as exc:
            error = exc.message
        else:
            return redirect(
                reverse("services:import", args=[cluster.pk]) + f"?job={job.pk}&host={host.pk}"
            )
    guests: list[dict[str, Any]] = []
    step = job.steps.select_related("host").first() if job else None
    if job and step and step.status == StepStatus.SUCCEEDED:
        known = set(VmService.objects.filter(cluster=cluster).values_list("name", flat=True))
        guests = [g for g in step.result.get("guests", []) if g.get("name") not in known]
    return render(
        request,
        "services/service_import.html",
        {
            "cluster": cluster,
            "form": form,
            "job": job,
            "step": step,
            "guests": guests,
            "error": error,
        },
    )


@role_required(write="operate")
def service_operation(request: HttpRequest, pk: int, service_pk: int, op: str) -> HttpResponse:
    service = get_object_or_404(
        VmService.objects.select_related("cluster", "host"), pk=service_pk, cluster_id=pk
    )
    if request.method != "POST" or op not in OPERATIONS:
        return redirect("clusters:detail", pk)
    host = operations.BEST if op == "relocate" else None
    try:
        job = operations.service_command(service, op, actor=request.user, host=host)
    except operations.OperationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{op.capitalize()} {service.name}: requested (job {job.pk}).")
    return redirect("clusters:detail", pk)


def migrate_choices(service: VmService) -> tuple[str, list[tuple[Host, rules.Target]]]:
    """The engine's answer for every host of the cluster (rules.targets), and why the guest
    cannot be live-migrated at all now ('' when it can)."""
    found = rules.targets(service.cluster, service.name, live=True)
    hosts = {h.name: h for h in Host.objects.filter(cluster_id=service.cluster_id)}
    rows = [(hosts[t.host], t) for t in found if t.host in hosts]
    # a refusal about the guest itself (not running, not migratable, ...) blocks every target
    blocker = next(
        (t.reason for t in found if t.refusal and t.refusal.code in operations.NOT_MOVABLE), ""
    )
    return blocker, rows


@role_required(read="read", write="operate")
def service_migrate(request: HttpRequest, pk: int, service_pk: int) -> HttpResponse:
    service = get_object_or_404(
        VmService.objects.select_related("cluster", "host", "failover_domain"),
        pk=service_pk,
        cluster_id=pk,
    )
    error, field_error = "", ""
    blocker, targets = migrate_choices(service)
    if request.method == "POST":
        target = request.POST.get("host", "")
        try:
            job = operations.service_command(service, "migrate", actor=request.user, host=target)
        except operations.OperationError as exc:
            if exc.field == "host":
                field_error = exc.message
            else:
                error = exc.message
        else:
            messages.success(request, f"Live-migrating {service.name} to {target} (job {job.pk}).")
            return redirect("clusters:detail", pk)
    return render(
        request,
        "services/service_migrate.html",
        {
            "cluster": service.cluster,
            "service": service,
            "blocker": blocker,
            "targets": targets,
            "error": error,
            "field_error": field_error,
        },
        status=409 if error else (400 if field_error else 200),
    )
