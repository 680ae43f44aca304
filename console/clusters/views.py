"""Cluster pages: the create-cluster wizard, the cluster page with its live host and service
lists, host actions (maintenance, acknowledge down) and fence devices.

Every write goes through a services layer (``console.operations.commands``,
``console.core.services``); the views only check roles, validate forms and show results.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, Prefetch, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.debug import sensitive_post_parameters

from console.clusters import services as cluster_services
from console.clusters.forms import (
    ClusterCreateForm,
    ClusterPolicyForm,
    FenceAgentForm,
    FenceDeviceForm,
    HostRowFormSet,
    HostsAddForm,
)
from console.clusters.models import Cluster, FenceDevice, Host
from console.core import services as core_services
from console.core.errors import Refused
from console.core.views import role_required
from console.engine.placement import vcpu_limit
from console.ha import panel
from console.ha.models import PendingCommand
from console.jobs import services as jobs
from console.jobs.models import Job, JobStep, StepStatus
from console.operations import commands as operations
from console.services.choices import OCCUPYING_STATES, ServiceState
from console.services.listing import GROUPS, SORTS, ServiceQuery
from console.services.models import FailoverDomain, VmService

COMMON_FENCE_AGENTS = (
    "fence_ipmilan",
    "fence_haven_lab",
    "fence_idrac",
    "fence_ilo",
    "fence_apc",
    "fence_virsh",
    "fence_xvm",
    "fence_dummy",
)


# --- the cluster page -----------------------------------------------------------------------
SERVICES_PER_PAGE = 50
REFUSALS_SHOWN_MIN = 15


def live_context(cluster: Cluster, params: Any = None) -> dict[str, Any]:
    """Hosts and one page of services (searched, filtered, sorted), in a fixed number of
    queries whatever the cluster's size (no N+1; pinned by a test)."""
    hosts = list(
        Host.objects.filter(cluster=cluster)
        .annotate(
            guests=Count("services", filter=Q(services__state__in=OCCUPYING_STATES)),
            vcpus_used=Sum("services__vcpus", filter=Q(services__state__in=OCCUPYING_STATES)),
        )
        .prefetch_related(Prefetch("fence_devices", queryset=FenceDevice.objects.order_by("order")))
        .order_by("name")
    )
    query = ServiceQuery.parse(params or {})
    services = query.apply(
        VmService.objects.filter(cluster=cluster).select_related(
            "host", "target", "failover_domain"
        )
    )
    page = Paginator(services, SERVICES_PER_PAGE).get_page((params or {}).get("page"))
    keep = urlencode(query.params())
    # people's commands the engine refused lately: said on the page, not only on their job
    refusals = list(
        PendingCommand.objects.filter(
            cluster=cluster,
            outcome=PendingCommand.Outcome.REFUSED,
            created__gte=timezone.now() - dt.timedelta(minutes=REFUSALS_SHOWN_MIN),
        ).order_by("-created")[:5]
    )
    membership = _membership([h.name for h in hosts])
    for h in hosts:
        h.membership = membership.get(h.name)  # type: ignore[attr-defined]
        ratio = cluster.cpu_overcommit if h.cpu_overcommit is None else h.cpu_overcommit
        h.vcpu_limit = vcpu_limit(h.cpus, ratio) if h.cpus else None  # type: ignore[attr-defined]
    return {
        "refusals": refusals,
        "cluster": cluster,
        "hosts": hosts,
        "cluster_stack": any(membership.values()),
        "services": page,
        "query": query,
        "keep": keep,
        "live_query": urlencode({**query.params(), "page": page.number}),
        "sorts": list(SORTS),
        "state_filters": [*GROUPS, *ServiceState.values],
        "domains": list(
            FailoverDomain.objects.filter(cluster=cluster).values_list("name", flat=True)
        ),
    }


def _membership(names: list[str]) -> dict[str, dict[str, Any] | None]:
    """Each host's corosync membership and quorum from its latest heartbeat (shared storage:
    console/bootstrap/cluster_stack.py); empty when Redis does not answer."""
    from redis import RedisError

    from console.ha.tasks import store

    try:
        reports = store().reports(names)
    except (RedisError, OSError):
        return {}
    return {name: report.beat.cluster for name, report in reports.items()}


@role_required()
def detail(request: HttpRequest, pk: int) -> HttpResponse:
    cluster = get_object_or_404(Cluster.objects.select_related("engine"), pk=pk)
    context = live_context(cluster, request.GET)
    return render(
        request,
        "clusters/detail.html",
        {**context, "tab": "overview", "panel": panel.get(cluster)},
    )


@role_required()
def live(request: HttpRequest, pk: int) -> HttpResponse:
    """The hosts and services tables alone; the cluster page refreshes it (same query)."""
    cluster = get_object_or_404(Cluster.objects.select_related("engine"), pk=pk)
    return render(request, "clusters/_live.html", live_context(cluster, request.GET))


@role_required(read="admin")
def policy_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """The cluster's policy (vCPU overcommit, admission control, the live rebalancer): the
    same fields as ``PATCH /api/clusters/{id}/``, saved through the same services layer."""
    cluster = get_object_or_404(Cluster, pk=pk)
    form = ClusterPolicyForm(request.POST if request.method == "POST" else None, instance=cluster)
    if form.is_bound and form.is_valid():
        core_services.save_serializer(form, actor=request.user, verb="update")
        messages.success(request, f"Policy of {cluster.name} saved.")
        return redirect("clusters:detail", cluster.pk)
    return render(
        request,
        "generic/form_page.html",
        {
            "cluster": cluster,
            "form": form,
            "title": f"Policy of {cluster.name}",
            "intro": "A host runs at most its CPUs times the overcommit ratio of vCPUs (a "
            "host's own ratio, set on its page or through the API, wins). Admission control "
            "refuses to start a protected guest when the cluster could not restart every protected "
            "guest after losing this many hosts (0 = off). The live rebalancer evens out "
            "memory use by live migration.",
            "cancel": reverse("clusters:detail", args=[cluster.pk]),
        },
    )


def _operation(request: HttpRequest, cluster: Cluster, call: Any, done: str) -> HttpResponse:
    try:
        job = call()
    except operations.OperationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{done} (job {job.pk}).")
    return redirect("clusters:detail", cluster.pk)


@role_required(write="operate")
def host_maintenance(request: HttpRequest, pk: int, host_pk: int) -> HttpResponse:
    host = get_object_or_404(Host, pk=host_pk, cluster_id=pk)
    if request.method != "POST":
        return redirect("clusters:detail", pk)
    on = request.POST.get("on") == "1"
    return _operation(
        request,
        host.cluster,
        lambda: operations.maintenance(host, on, actor=request.user),
        f"{host.name} {'goes into' if on else 'leaves'} maintenance",
    )


@role_required(write="operate")
def host_acknowledge_down(request: HttpRequest, pk: int, host_pk: int) -> HttpResponse:
    host = get_object_or_404(Host, pk=host_pk, cluster_id=pk)
    if request.method != "POST":
        return redirect("clusters:detail", pk)
    return _operation(
        request,
        host.cluster,
        lambda: operations.acknowledge_down(host, actor=request.user),
        f"{host.name} acknowledged down: its guests may start elsewhere",
    )


# --- the create-cluster wizard --------------------------------------------------------------
def _bootstrap() -> Any:
    """The SSH bootstrap module (imported late: tests replace it, and it needs paramiko)."""
    import importlib

    return importlib.import_module("console.bootstrap.ssh")


def _wizard_forms(
    request: HttpRequest, form_class: type[ClusterCreateForm] = ClusterCreateForm
) -> tuple[ClusterCreateForm, Any]:
    if request.method == "POST":
        data = request.POST.copy()
        if request.POST.get("step") == "add-row":
            raw = str(data.get("hosts-TOTAL_FORMS") or "1")
            # A count that is not a number is left as it is: the formset reports it.
            if raw.isdecimal() and len(raw) < 4:
                data["hosts-TOTAL_FORMS"] = str(min(int(raw) + 1, HostRowFormSet.max_num))
        return form_class(data), HostRowFormSet(data, prefix="hosts")
    initial = [{"port": 22}] * (3 if form_class is ClusterCreateForm else 1)
    return form_class(), HostRowFormSet(prefix="hosts", initial=initial)


@sensitive_post_parameters()
@role_required(read="admin")
def create(request: HttpRequest) -> HttpResponse:
    """Step 1: name and hosts; "scan" reads each host's SSH key. Step 2: confirm the keys,
    give the root passwords, start the bootstrap job and go to its progress page."""
    form, rows = _wizard_forms(request)
    step = request.POST.get("step", "")
    scanned = False
    # Both are validated (no short circuit), so every field shows its own error at once.
    valid = request.method == "POST" and (form.is_valid() & rows.is_valid())
    if valid and step == "scan":
        scanned = _scan(form, rows)
    elif valid and step == "create":
        job = _start(request, form, rows)
        if job is not None:
            return redirect("jobs:detail", job.pk)
        scanned = True
    return render(
        request,
        "clusters/create.html",
        {"form": form, "rows": rows, "scanned": scanned, "title": "Create a cluster"},
    )


@sensitive_post_parameters()
@role_required(read="admin")
def add_hosts(request: HttpRequest, pk: int) -> HttpResponse:
    """The wizard's steps for an existing cluster: hosts, their keys, their root passwords;
    then the same SSH bootstrap (console/operations/membership.py ``add_hosts``)."""
    cluster = get_object_or_404(Cluster, pk=pk)
    form, rows = _wizard_forms(request, HostsAddForm)
    step = request.POST.get("step", "")
    scanned = False
    valid = request.method == "POST" and (form.is_valid() & rows.is_valid())
    if valid and step == "scan":
        scanned = _scan(form, rows)
    elif valid and step == "create":
        job = _start(request, form, rows, cluster=cluster)
        if job is not None:
            return redirect("jobs:detail", job.pk)
        scanned = True
    return render(
        request,
        "clusters/create.html",
        {
            "form": form,
            "rows": rows,
            "scanned": scanned,
            "cluster": cluster,
            "title": f"Add hosts to {cluster.name}",
        },
    )


def _scan(form: ClusterCreateForm, rows: Any) -> bool:
    """Read every host's key; an unreachable host is an error on its address field."""
    try:
        bootstrap = _bootstrap()
    except ImportError:
        form.add_error(None, "The SSH bootstrap is not installed in this console yet.")
        return False
    ok = True
    for row in rows.forms:
        data = row.cleaned_data
        if not data.get("name"):
            continue
        try:
            fingerprint = bootstrap.scan_host_key(data["address"], port=data["port"])
        except bootstrap.BootstrapError as exc:
            row.add_error("address", f"Could not read the SSH host key: {exc}")
            ok = False
        else:
            data["fingerprint"] = fingerprint
    if ok:  # show the fingerprints: the bound data carries them on to step 2
        data = form.data.copy()  # type: ignore[attr-defined]
        for i, row in enumerate(rows.forms):
            data[f"hosts-{i}-fingerprint"] = row.cleaned_data.get("fingerprint", "")
        form.data = rows.data = data
        for row in rows.forms:
            row.data = data
    return ok


def _start(
    request: HttpRequest, form: ClusterCreateForm, rows: Any, cluster: Cluster | None = None
) -> Job | None:
    data = form.cleaned_data
    hosts = rows.rows()
    if not data.get("confirm"):
        form.add_error("confirm", "Check the fingerprints and tick this box to trust them.")
    if any(not h.get("fingerprint") for h in hosts):
        form.add_error(None, "Read the host keys first (Scan host keys).")
    same = data["password_mode"] == "same"
    if same and not data.get("password"):
        form.add_error("password", "Give the root password of the hosts.")
    if not same:
        for row in rows.forms:
            if row.cleaned_data.get("name") and not row.cleaned_data.get("password"):
                row.add_error("password", "Give this host's root password.")
    if form.errors or any(r.errors for r in rows.forms):
        return None
    try:
        bootstrap = _bootstrap()
    except ImportError:
        form.add_error(None, "The SSH bootstrap is not installed in this console yet.")
        return None
    specs = [
        bootstrap.HostSpec(
            name=h["name"],
            address=h["address"],
            password=data["password"] if same else h["password"],
            fingerprint=h["fingerprint"],
            port=h["port"],
        )
        for h in hosts
    ]
    if cluster is not None:
        from console.operations import membership

        try:
            return membership.add_hosts(cluster, specs, actor=request.user)
        except Refused as exc:
            form.add_error(None, exc.message)
            return None
    try:
        job: Job = bootstrap.start_bootstrap(
            data["name"], specs, actor=request.user, shared_storage=data["shared_storage"]
        )
    except bootstrap.BootstrapError as exc:
        form.add_error(None, str(exc))
        return None
    return job


# --- fence devices --------------------------------------------------------------------------
def cached_metadata(agent: str) -> dict[str, Any] | None:
    """The agent's metadata from the last ``fence_metadata`` step that succeeded.

    The step's result is the cache: any process (web, worker) sees it, and it survives
    restarts; nothing runs ``fence_* -o metadata`` on the console itself.
    """
    step = (
        JobStep.objects.filter(
            kind="fence_metadata", status=StepStatus.SUCCEEDED, args__agent=agent
        )
        .order_by("-finished", "-pk")
        .first()
    )
    return step.result if step is not None else None


def _running_metadata_job(agent: str) -> Job | None:
    step = (
        JobStep.objects.filter(
            kind="fence_metadata",
            args__agent=agent,
            status__in=(StepStatus.PENDING, StepStatus.DISPATCHED),
        )
        .select_related("job")
        .order_by("-pk")
        .first()
    )
    return step.job if step is not None else None


def _any_online_host(cluster: Cluster) -> Host | None:
    return Host.objects.filter(cluster=cluster, state="online").order_by("name").first()


@role_required(read="read")
def fence_list(request: HttpRequest, pk: int) -> HttpResponse:
    cluster = get_object_or_404(Cluster, pk=pk)
    devices = FenceDevice.objects.filter(cluster=cluster).select_related("host")
    hosts = Host.objects.filter(cluster=cluster).prefetch_related(
        Prefetch("fence_devices", queryset=FenceDevice.objects.order_by("order", "name"))
    )
    return render(
        request,
        "clusters/fence_list.html",
        {"cluster": cluster, "devices": devices, "hosts": hosts, "tab": "fence"},
    )


@sensitive_post_parameters()
@role_required(read="admin")
def fence_edit(request: HttpRequest, pk: int, device_pk: int | None = None) -> HttpResponse:
    cluster = get_object_or_404(Cluster, pk=pk)
    device = get_object_or_404(FenceDevice, pk=device_pk, cluster=cluster) if device_pk else None
    agent = device.agent if device else (request.GET.get("agent") or request.POST.get("agent"))
    agent_form = FenceAgentForm({"agent": agent} if agent else None)
    if not agent or not agent_form.is_valid():
        return render(
            request,
            "clusters/fence_agent.html",
            {"cluster": cluster, "form": agent_form, "agents": COMMON_FENCE_AGENTS},
        )
    metadata = cached_metadata(agent)
    if metadata is None:
        return render(
            request,
            "clusters/fence_metadata.html",
            {"cluster": cluster, "agent": agent, "job": _running_metadata_job(agent)},
        )
    initial = {"host": request.GET.get("host"), "order": 1} if device is None else None
    form = FenceDeviceForm(
        request.POST if request.method == "POST" and "name" in request.POST else None,
        instance=device,
        cluster=cluster,
        agent=agent,
        parameters=list(metadata.get("parameters") or []),
        initial=initial,
    )
    if form.is_bound and form.is_valid():
        core_services.save_serializer(
            form, actor=request.user, verb="update" if device else "create"
        )
        messages.success(request, f"Fence device {form.instance.name} saved.")
        return redirect("clusters:fence", cluster.pk)
    return render(
        request,
        "clusters/fence_form.html",
        {
            "cluster": cluster,
            "form": form,
            "agent": agent,
            "metadata": metadata,
            "device": device,
            "title": f"{'Edit' if device else 'New'} fence device ({agent})",
        },
    )


@role_required(read="admin")
def fence_metadata(request: HttpRequest, pk: int) -> HttpResponse:
    """Ask a host's agent for ``<agent> -o metadata``; the page polls until it is back."""
    cluster = get_object_or_404(Cluster, pk=pk)
    agent = request.POST.get("agent") or request.GET.get("agent") or ""
    form = FenceAgentForm({"agent": agent})
    if not form.is_valid():
        return render(
            request,
            "clusters/fence_agent.html",
            {"cluster": cluster, "form": form, "agents": COMMON_FENCE_AGENTS},
        )
    url = reverse("clusters:fence-new", args=[cluster.pk]) + f"?agent={agent}"
    if request.method == "POST" and _running_metadata_job(agent) is None:
        host = _any_online_host(cluster)
        jobs.create_job(
            "fence-metadata",
            [jobs.StepSpec(host, "fence_metadata", {"agent": agent})],
            cluster=cluster,
            created_by=request.user,
            params={"agent": agent},
            message=f"read the parameters of {agent}",
        )
    if request.htmx and cached_metadata(agent) is not None:  # type: ignore[attr-defined]
        response = HttpResponse(status=204)
        response["HX-Redirect"] = url
        return response
    if request.htmx:  # type: ignore[attr-defined]
        return render(
            request,
            "clusters/_fence_metadata_wait.html",
            {"cluster": cluster, "agent": agent, "job": _running_metadata_job(agent)},
        )
    return redirect(url)


@role_required(read="admin")
def fence_delete(request: HttpRequest, pk: int, device_pk: int) -> HttpResponse:
    cluster = get_object_or_404(Cluster, pk=pk)
    device = get_object_or_404(FenceDevice, pk=device_pk, cluster=cluster)
    if request.method == "POST":
        core_services.delete_object(device, actor=request.user)
        messages.success(request, f"Fence device {device.name} deleted.")
        return redirect("clusters:fence", cluster.pk)
    return render(
        request,
        "generic/confirm_delete.html",
        {
            "cluster": cluster,
            "object": device.name,
            "what": "fence device",
            "consequence": f"{device.host.name} can then only recover with a person's "
            "acknowledgement, unless it has another device.",
            "cancel": reverse("clusters:fence", args=[cluster.pk]),
        },
    )


@role_required(read="admin", write="admin")
def fence_test(request: HttpRequest, pk: int, device_pk: int) -> HttpResponse:
    """Run the agent with ``action=status`` from another host: proves address and secrets."""
    cluster = get_object_or_404(Cluster, pk=pk)
    device = get_object_or_404(
        FenceDevice.objects.select_related("host"), pk=device_pk, cluster=cluster
    )
    if request.method != "POST":
        return redirect("clusters:fence", cluster.pk)
    job = cluster_services.fence_test(cluster, device, actor=request.user)
    return redirect("jobs:detail", job.pk)
