"""Failover domains and VM services: lists, forms, and the service operations (start, stop,
enable, disable, relocate, migrate) — all writes through the services layer."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.db.models import Count, Prefetch
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from console.clusters.models import Cluster, Host
from console.clusters.scope import InCluster
from console.core.generic import ActionView, ObjectDeleteView, ObjectEditView, ObjectListView
from console.core.views import role_required
from console.ha import rules
from console.jobs.models import Job, StepStatus
from console.operations import commands as operations
from console.services import services as domain_services
from console.services.forms import DOMAIN_HELP, FailoverDomainForm, ImportGuestForm, VmServiceForm
from console.services.models import FailoverDomain, FailoverDomainMember, VmService

OPERATIONS = ("start", "stop", "enable", "disable", "relocate")


# --- failover domains -----------------------------------------------------------------------
DOMAIN_GUESTS_SHOWN = 10


class DomainList(InCluster, ObjectListView):
    template_name = "services/domain_list.html"
    context_object_name = "domains"
    tab = "domains"
    heading, add = "Failover domains", ("services:domain-new", "New failover domain")

    def get_queryset(self) -> Any:
        # each domain's first guests by name and how many it has (10,000 guests are not
        # listed: "and N more" links to the service list filtered by the domain)
        first = VmService.objects.only("id", "name", "failover_domain_id").order_by("name")
        domains = list(
            FailoverDomain.objects.filter(cluster=self.cluster)
            .annotate(used_by=Count("services"))
            .prefetch_related(
                Prefetch("members", queryset=FailoverDomainMember.objects.select_related("host")),
                Prefetch("services", queryset=first[:DOMAIN_GUESTS_SHOWN], to_attr="first_guests"),
            )
        )
        for d in domains:
            d.more_guests = d.used_by - len(d.first_guests)  # type: ignore[attr-defined]
        return domains

    def extra_context(self) -> dict[str, Any]:
        return {"help": DOMAIN_HELP}


class DomainEdit(InCluster, ObjectEditView):
    model = FailoverDomain
    form_class = FailoverDomainForm
    pk_kwarg = "domain_pk"
    what = "failover domain"
    template_name = "services/domain_form.html"
    dry_run = True

    def save(self, form: Any) -> Any:
        return domain_services.save_domain(
            form.save(commit=False), form.members(), actor=self.request.user, verb=self.verb
        )

    def preview(self, form: Any) -> Any:
        return domain_services.preview_domain(form.save(commit=False), form.members())

    def context(self, form: Any) -> dict[str, Any]:
        return {"domain": self.object}

    def success_url(self) -> str:
        return reverse("services:domains", args=[self.cluster.pk])


class DomainDelete(InCluster, ObjectDeleteView):
    model = FailoverDomain
    pk_kwarg = "domain_pk"
    what = "failover domain"

    def delete(self) -> None:
        domain_services.delete_domain(self.object, actor=self.request.user)

    def consequence(self) -> str:
        users = list(self.object.services.values_list("name", flat=True))
        if users:
            return f"Used by {', '.join(users)}: deleting it will be refused."
        return "No service uses it."

    def success_url(self) -> str:
        return reverse("services:domains", args=[self.cluster.pk])


# --- VM services ----------------------------------------------------------------------------
class ServiceEdit(InCluster, ObjectEditView):
    model = VmService
    form_class = VmServiceForm
    pk_kwarg = "service_pk"
    what = "service"
    template_name = "services/service_form.html"
    dry_run = True

    def save(self, form: Any) -> Any:
        domain_services.save_service(form, actor=self.request.user, verb=self.verb)
        return form.instance

    def saved_message(self, saved: Any) -> str:
        new = "" if self.object else " The cluster starts it on the best allowed host."
        return f"Service {saved.name} saved.{new}"

    def preview(self, form: Any) -> Any:
        return domain_services.preview_service(form.instance)

    def title(self) -> str:
        return f"Edit service {self.object.name}" if self.object else "New VM service"

    def context(self, form: Any) -> dict[str, Any]:
        return {"service": self.object}

    def success_url(self) -> str:
        return reverse("clusters:detail", args=[self.cluster.pk])


class ServiceDelete(InCluster, ObjectDeleteView):
    model = VmService
    pk_kwarg = "service_pk"
    what = "VM service"

    def delete(self) -> None:
        domain_services.delete_service(self.object, actor=self.request.user)

    def deleted_message(self) -> str:
        return f"Service {self.object.name} removed from the cluster."

    def consequence(self) -> str:
        return "The cluster stops managing this guest. The guest's definition stays on the hosts."

    def success_url(self) -> str:
        return reverse("clusters:detail", args=[self.cluster.pk])


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


class ServiceOperation(ActionView):
    """The buttons of a service's row: start, stop, enable, disable, relocate (to the best
    host); back to the cluster page, which says what was asked."""

    def load(self) -> None:
        self.service = get_object_or_404(
            VmService.objects.select_related("cluster", "host"),
            pk=self.kwargs["service_pk"],
            cluster_id=self.kwargs["pk"],
        )

    def back_url(self) -> str:
        return reverse("clusters:detail", args=[self.kwargs["pk"]])

    def perform(self) -> str | HttpResponseBase:
        op = self.kwargs["op"]
        if op not in OPERATIONS:
            return redirect(self.back_url())
        host = operations.BEST if op == "relocate" else None
        job = operations.service_command(self.service, op, actor=self.request.user, host=host)
        return f"{op.capitalize()} {self.service.name}: requested (job {job.pk})."


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
