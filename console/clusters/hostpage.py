"""The host page: everything about one host on one page, linked from every host name."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Max, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from console.bootstrap.pki import describe
from console.clusters.forms import HostSettingsForm
from console.clusters.models import Cluster, FenceDevice, Host
from console.clusters.scope import OnHost
from console.core import services as core_services
from console.core.errors import Refused
from console.core.generic import ActionView, FormPageView
from console.core.views import role_required
from console.events.models import Event
from console.ha.actions import libvirt_uri
from console.jobs.models import Job
from console.services.models import FailoverDomain, VmService

RECENT_EVENTS = 30


@role_required()
def host_detail(request: HttpRequest, pk: int, host_pk: int) -> HttpResponse:
    cluster = get_object_or_404(Cluster, pk=pk)
    host = get_object_or_404(Host, pk=host_pk, cluster=cluster)
    return _host_page(request, cluster, host)


class HostSettings(OnHost, FormPageView):
    """The host's own settings (its vCPU overcommit ratio): a bad value shows the host page
    again with the form's error on the field; nothing is saved."""

    form_class = HostSettingsForm

    def form_kwargs(self) -> dict[str, Any]:
        return {"instance": self.host}

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return redirect(self.back_url())

    def perform(self, form: Any) -> str:
        core_services.save_serializer(form, actor=self.request.user, verb="update")
        return f"Settings of {self.host.name} saved."

    def success_url(self) -> str:
        return self.back_url()

    def form_invalid(self, form: Any) -> HttpResponse:
        fresh = Host.objects.get(
            pk=self.host.pk
        )  # the page shows what is stored, the form the input
        return _host_page(self.request, self.cluster, fresh, settings_form=form, status=400)


def _host_page(
    request: HttpRequest,
    cluster: Cluster,
    host: Host,
    *,
    settings_form: HostSettingsForm | None = None,
    status: int = 200,
    **extra: object,
) -> HttpResponse:
    guests = list(
        VmService.objects.filter(Q(host=host) | Q(target=host))
        .select_related("host", "target", "failover_domain")
        .order_by("name")
    )
    devices = list(FenceDevice.objects.filter(host=host).order_by("order", "name"))
    # each device's last status test (the Test button's job), newest first
    tests: dict[str, Job] = {}
    for job in Job.objects.filter(
        cluster=cluster, kind="fence-test", params__host=host.name
    ).order_by("-created")[:20]:
        tests.setdefault(str(job.params.get("device", "")), job)
    events = list(
        Event.objects.filter(
            Q(object_type="host", object_name=host.name)
            | Q(data__host=host.name)
            | Q(actor=f"agent:{host.name}")
        )
        .select_related("cluster")
        .order_by("-time", "-id")[:RECENT_EVENTS]
    )
    memory_used = sum(g.memory_mb for g in guests if g.host_id == host.pk)
    vcpus = sum(g.vcpus for g in guests if g.host_id == host.pk)
    uri = libvirt_uri(host)
    # its cluster's failover domains: those it is in (its priority), the others offered
    domains = [
        (d, d.mine, min(100, (d.last or 0) + 1))  # offered after its last member
        for d in FailoverDomain.objects.filter(cluster=cluster)
        .annotate(
            last=Max("members__priority"),
            mine=Max("members__priority", filter=Q(members__host=host)),
        )
        .order_by("name")
    ]
    return render(
        request,
        "clusters/host_detail.html",
        {
            "cluster": cluster,
            "host": host,
            "guests": guests,
            "devices": [(d, tests.get(d.name)) for d in devices],
            "events": events,
            "guest_memory_mib": memory_used,
            "guest_vcpus": vcpus,
            "migration_uri": uri,
            "domains": domains,
            "tls": describe(host.tls_certificate) if host.tls_certificate else None,
            # over TLS by default, yet this host has no certificate of the cluster's CA (it
            # was bootstrapped before the CA, or its TLS step failed): a repair gives it one
            "tls_missing": uri.startswith("qemu+tcp:")
            and settings.HAVEN_MIGRATION_TRANSPORT == "tls",
            "tab": "overview",
            "settings_form": settings_form or HostSettingsForm(instance=host),
            "cluster_overcommit": cluster.cpu_overcommit,
            **extra,
        },
        status=status,
    )


@role_required()
def host_what_if(request: HttpRequest, pk: int, host_pk: int) -> HttpResponse:
    """The engine's simulator on the live cluster: where every guest would go (read-only)."""
    from console.ha import whatif

    cluster = get_object_or_404(Cluster, pk=pk)
    host = get_object_or_404(Host, pk=host_pk, cluster=cluster)
    event = request.GET.get("event", "power_off")
    error = ""
    prediction = None
    try:
        prediction = whatif.predict(cluster, host.name, event)
    except whatif.WhatIfError as exc:
        error = exc.message
    return render(
        request,
        "clusters/what_if.html",
        {
            "cluster": cluster,
            "host": host,
            "event": event,
            "prediction": prediction,
            "error": error,
            "tab": "overview",
        },
        status=400 if error else 200,
    )


class HostAction(OnHost, ActionView):
    """A button of the host page (admin only, also to look at); most start a job and show it."""

    read = "admin"
    write = "admin"
    job: Job

    def done_url(self) -> str:
        return reverse("jobs:detail", args=[self.job.pk])


class HostRotateCredentials(HostAction):
    """The agent's broker password and sealing key anew (console/ha/credentials.py)."""

    def perform(self) -> str:
        from console.ha import credentials

        self.job = credentials.rotate(self.host, actor=self.request.user)
        return f"Rotating {self.host.name}'s broker credentials (job {self.job.pk})."


class HostRemove(HostAction):
    """Remove the host (console/operations/membership.py); the root password, if given,
    uninstalls its agent over SSH. A refusal says what to do first (maintenance)."""

    sensitive = True

    def perform(self) -> str:
        from console.operations import membership

        password = str(self.request.POST.get("password") or "")
        self.job = membership.remove_host(self.host, actor=self.request.user, password=password)
        return f"Removing {self.host.name} from cluster {self.cluster.name} (job {self.job.pk})."


class HostRepair(HostAction):
    """Run the SSH bootstrap again on this host, keeping its guests and history."""

    sensitive = True

    def perform(self) -> str:
        from console.operations import membership

        password = str(self.request.POST.get("password") or "")
        if not password:
            raise Refused(f"Give the root password of {self.host.name} to repair it.")
        self.job = membership.repair_host(
            self.host,
            password,
            actor=self.request.user,
            # set only when the person ticked "accept the new host key" after a scan
            fingerprint=str(self.request.POST.get("fingerprint") or ""),
        )
        return ""


class HostJoinDomain(HostAction):
    """Make the host a member of one of its cluster's failover domains (the host page offers
    every domain it is not in: a host just added is in none)."""

    def done_url(self) -> str:
        return self.back_url()

    def perform(self) -> str:
        from console.services import services

        domain = FailoverDomain.objects.filter(
            pk=_number(self.request.POST.get("domain")), cluster=self.cluster
        ).first()
        if domain is None:
            raise Refused(f"Choose a failover domain of cluster {self.cluster.name}.")
        priority = _number(self.request.POST.get("priority"))
        services.join_domain(domain, self.host, priority, actor=self.request.user)
        return f"{self.host.name} is a member of {domain.name} (priority {priority})."


def _number(value: object) -> int:
    """A whole number from a form field; 0 when it is not one (the services layer refuses)."""
    try:
        return int(str(value))
    except ValueError:
        return 0


class HostCheckKey(HostAction):
    """Read the host key the host presents now, beside the pinned one: the host page then
    offers to accept a changed key for the repair (the fingerprint shown, ticked by a person)."""

    def perform(self) -> HttpResponse:
        from console.operations import membership

        check = membership.check_host_key(self.host)
        return _host_page(self.request, self.cluster, self.host, key_check=check)
