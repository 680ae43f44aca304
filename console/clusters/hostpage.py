"""The host page: everything about one host on one page, linked from every host name."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.debug import sensitive_post_parameters

from console.bootstrap.pki import describe
from console.clusters.forms import HostSettingsForm
from console.clusters.models import Cluster, FenceDevice, Host
from console.core import services as core_services
from console.core.errors import Refused
from console.core.views import role_required
from console.events.models import Event
from console.ha.actions import libvirt_uri
from console.jobs.models import Job
from console.services.models import VmService

RECENT_EVENTS = 30


@role_required()
def host_detail(request: HttpRequest, pk: int, host_pk: int) -> HttpResponse:
    cluster = get_object_or_404(Cluster, pk=pk)
    host = get_object_or_404(Host, pk=host_pk, cluster=cluster)
    return _host_page(request, cluster, host)


@role_required(read="admin", write="admin")
def host_settings(request: HttpRequest, pk: int, host_pk: int) -> HttpResponse:
    """The host's own settings (its vCPU overcommit ratio): a bad value shows the host page
    again with the form's error on the field; nothing is saved."""
    cluster = get_object_or_404(Cluster, pk=pk)
    host = get_object_or_404(Host, pk=host_pk, cluster=cluster)
    if request.method != "POST":
        return redirect("clusters:host", cluster.pk, host.pk)
    form = HostSettingsForm(request.POST, instance=host)
    if form.is_valid():
        core_services.save_serializer(form, actor=request.user, verb="update")
        messages.success(request, f"Settings of {host.name} saved.")
        return redirect("clusters:host", cluster.pk, host.pk)
    fresh = Host.objects.get(pk=host.pk)  # the page shows what is stored, the form the input
    return _host_page(request, cluster, fresh, settings_form=form, status=400)


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
            "migration_uri": libvirt_uri(host),
            "tls": describe(host.tls_certificate) if host.tls_certificate else None,
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


@role_required(read="admin", write="admin")
def host_rotate_credentials(request: HttpRequest, pk: int, host_pk: int) -> HttpResponse:
    """The agent's broker password and sealing key anew (console/bootstrap/credentials.py)."""
    from django.contrib import messages
    from django.shortcuts import redirect

    from console.bootstrap import credentials
    from console.core.errors import Refused

    cluster = get_object_or_404(Cluster, pk=pk)
    host = get_object_or_404(Host, pk=host_pk, cluster=cluster)
    if request.method != "POST":
        return redirect("clusters:host", cluster.pk, host.pk)
    try:
        job = credentials.rotate(host, actor=request.user)
    except Refused as exc:
        messages.error(request, exc.message)
        return redirect("clusters:host", cluster.pk, host.pk)
    messages.success(request, f"Rotating {host.name}'s broker credentials (job {job.pk}).")
    return redirect("jobs:detail", job.pk)


@sensitive_post_parameters()
@role_required(read="admin", write="admin")
def host_remove(request: HttpRequest, pk: int, host_pk: int) -> HttpResponse:
    """Remove the host (console/operations/membership.py); the root password, if given,
    uninstalls its agent over SSH. A refusal says what to do first (maintenance)."""
    from console.operations import membership

    cluster = get_object_or_404(Cluster, pk=pk)
    host = get_object_or_404(Host, pk=host_pk, cluster=cluster)
    if request.method != "POST":
        return redirect("clusters:host", cluster.pk, host.pk)
    try:
        job = membership.remove_host(
            host, actor=request.user, password=str(request.POST.get("password") or "")
        )
    except Refused as exc:
        messages.error(request, exc.message)
        return redirect("clusters:host", cluster.pk, host.pk)
    messages.success(request, f"Removing {host.name} from cluster {cluster.name} (job {job.pk}).")
    return redirect("jobs:detail", job.pk)


@sensitive_post_parameters()
@role_required(read="admin", write="admin")
def host_repair(request: HttpRequest, pk: int, host_pk: int) -> HttpResponse:
    """Run the SSH bootstrap again on this host, keeping its guests and history."""
    from console.operations import membership

    cluster = get_object_or_404(Cluster, pk=pk)
    host = get_object_or_404(Host, pk=host_pk, cluster=cluster)
    if request.method != "POST":
        return redirect("clusters:host", cluster.pk, host.pk)
    password = str(request.POST.get("password") or "")
    if not password:
        messages.error(request, f"Give the root password of {host.name} to repair it.")
        return redirect("clusters:host", cluster.pk, host.pk)
    try:
        job = membership.repair_host(
            host,
            password,
            actor=request.user,
            # set only when the person ticked "accept the new host key" after a scan
            fingerprint=str(request.POST.get("fingerprint") or ""),
        )
    except Refused as exc:
        messages.error(request, exc.message)
        return redirect("clusters:host", cluster.pk, host.pk)
    return redirect("jobs:detail", job.pk)


@role_required(read="admin", write="admin")
def host_check_key(request: HttpRequest, pk: int, host_pk: int) -> HttpResponse:
    """Read the host key the host presents now, beside the pinned one: the host page then
    offers to accept a changed key for the repair (the fingerprint shown, ticked by a person)."""
    from console.operations import membership

    cluster = get_object_or_404(Cluster, pk=pk)
    host = get_object_or_404(Host, pk=host_pk, cluster=cluster)
    if request.method != "POST":
        return redirect("clusters:host", cluster.pk, host.pk)
    try:
        check = membership.check_host_key(host)
    except Refused as exc:
        messages.error(request, exc.message)
        return redirect("clusters:host", cluster.pk, host.pk)
    return _host_page(request, cluster, host, key_check=check)
