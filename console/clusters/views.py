"""Cluster pages: the create-cluster wizard, the cluster page with its live host and service
lists, host actions (maintenance, acknowledge down) and fence devices.

Every write goes through a services layer (``console.operations.commands``,
``console.core.services``); the views only check roles, validate forms and show results.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlencode

from django.core.paginator import Paginator
from django.db.models import Count, Prefetch, Q, Sum
from django.http import HttpRequest, HttpResponse, HttpResponseBase
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
from console.clusters.scope import InCluster, OnHost
from console.core.errors import Refused
from console.core.filtersets import PAGE
from console.core.generic import ActionView, ObjectDeleteView, ObjectEditView, ObjectListView
from console.core.views import role_required
from console.engine.placement import vcpu_limit
from console.ha import panel
from console.ha.models import PendingCommand
from console.jobs import services as jobs
from console.jobs.models import Job, JobStep, StepStatus
from console.operations import commands as operations
from console.services.choices import OCCUPYING_STATES, ServiceState
from console.services.filtersets import GROUPS, SORTS, ServiceFilterSet
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
HOSTS_PER_PAGE = 50
REFUSALS_SHOWN_MIN = 15


def live_context(cluster: Cluster, params: Any = None) -> dict[str, Any]:
    """One page of hosts and one of services (searched, filtered, sorted), in a fixed number
    of queries whatever the cluster's size (no N+1; pinned by a test). Hosts come
    `HOSTS_PER_PAGE` at a time (``hosts_page``): at 128 hosts their rows were most of the
    page's rendering, every 2 s of its live updates."""
    names = list(
        Host.objects.filter(cluster=cluster).order_by("name").values_list("name", flat=True)
    )
    host_page = Paginator(names, HOSTS_PER_PAGE).get_page((params or {}).get("hosts_page"))
    hosts = list(
        Host.objects.filter(cluster=cluster, name__in=list(host_page))
        .annotate(
            guests=Count("services", filter=Q(services__state__in=OCCUPYING_STATES)),
            vcpus_used=Sum("services__vcpus", filter=Q(services__state__in=OCCUPYING_STATES)),
        )
        .prefetch_related(Prefetch("fence_devices", queryset=FenceDevice.objects.order_by("order")))
        .order_by("name")
    )
    query = ServiceFilterSet(
        params or {},
        VmService.objects.filter(cluster=cluster).select_related(
            "host", "target", "failover_domain"
        ),
        surface=PAGE,
    )
    page = Paginator(query.qs, SERVICES_PER_PAGE).get_page((params or {}).get("page"))
    keep = urlencode(query.params())
    hosts_at = {"hosts_page": host_page.number} if host_page.has_other_pages() else {}
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
        "host_page": host_page,
        "host_names": names,
        "keep_hosts": urlencode(hosts_at),
        "cluster_stack": any(membership.values()),
        "services": page,
        "query": query,
        "keep": keep,
        "live_query": urlencode({**query.params(), "page": page.number, **hosts_at}),
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
        return store().memberships(names)
    except (RedisError, OSError):
        return {}


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


class PolicyEdit(ObjectEditView):
    """The cluster's policy (vCPU overcommit, admission control, the live rebalancer): the
    same fields as ``PATCH /api/clusters/{id}/``, saved through the same services layer."""

    model = Cluster
    form_class = ClusterPolicyForm

    def saved_message(self, saved: Any) -> str:
        return f"Policy of {saved.name} saved."

    def title(self) -> str:
        return f"Policy of {self.object.name}"

    def context(self, form: Any) -> dict[str, Any]:
        return {
            "cluster": self.object,
            "intro": "A host runs at most its CPUs times the overcommit ratio of vCPUs (a "
            "host's own ratio, set on its page or through the API, wins). Admission control "
            "refuses to start a protected guest when the cluster could not restart every protected "
            "guest after losing this many hosts (0 = off). The live rebalancer evens out "
            "memory use by live migration.",
            "cancel": self.success_url(),
        }

    def success_url(self) -> str:
        return reverse("clusters:detail", args=[self.object.pk])


class HostMaintenance(OnHost, ActionView):
    back = "clusters:detail"

    def perform(self) -> str:
        on = self.request.POST.get("on") == "1"
        job = operations.maintenance(self.host, on, actor=self.request.user)
        return f"{self.host.name} {'goes into' if on else 'leaves'} maintenance (job {job.pk})."


class HostAcknowledgeDown(OnHost, ActionView):
    back = "clusters:detail"

    def perform(self) -> str:
        job = operations.acknowledge_down(self.host, actor=self.request.user)
        return f"{self.host.name} acknowledged down: its guests may start elsewhere (job {job.pk})."


# --- the create-cluster wizard --------------------------------------------------------------
def _bootstrap() -> Any:
    """The SSH bootstrap module (imported late: tests replace it, and it needs paramiko)."""
    import importlib

    return importlib.import_module("console.bootstrap.ssh")


def _wizard_forms(
    request: HttpRequest, form_class: type[ClusterCreateForm] = ClusterCreateForm, **kw: Any
) -> tuple[ClusterCreateForm, Any]:
    if request.method == "POST":
        data = request.POST.copy()
        if request.POST.get("step") == "add-row":
            raw = str(data.get("hosts-TOTAL_FORMS") or "1")
            # A count that is not a number is left as it is: the formset reports it.
            if raw.isdecimal() and len(raw) < 4:
                data["hosts-TOTAL_FORMS"] = str(min(int(raw) + 1, HostRowFormSet.max_num))
        return form_class(data, **kw), HostRowFormSet(data, prefix="hosts")
    initial = [{"port": 22}] * (3 if form_class is ClusterCreateForm else 1)
    return form_class(**kw), HostRowFormSet(prefix="hosts", initial=initial)


@sensitive_post_parameters()
@role_required(read="admin")
def create(request: HttpRequest) -> HttpResponse:
    """Step 1: name and hosts; "scan" reads each host's SSH key. Step 2: confirm the keys,
    give the root passwords, start the bootstrap job and go to its progress page."""
    return _wizard(request, None)


@sensitive_post_parameters()
@role_required(read="admin")
def add_hosts(request: HttpRequest, pk: int) -> HttpResponse:
    """The wizard's steps for an existing cluster: hosts, their keys, their root passwords;
    then the same SSH bootstrap (console/operations/membership.py ``add_hosts``)."""
    return _wizard(request, get_object_or_404(Cluster, pk=pk))


def _wizard(request: HttpRequest, cluster: Cluster | None) -> HttpResponse:
    if cluster is None:
        form, rows = _wizard_forms(request)
    else:
        form, rows = _wizard_forms(request, HostsAddForm, cluster=cluster)
    step = request.POST.get("step", "")
    scanned = False
    # Both are validated (no short circuit), so every field shows its own error at once.
    valid = request.method == "POST" and (form.is_valid() & rows.is_valid())
    if valid and step == "scan":
        scanned = _scan(form, rows)
    elif valid and step == "create":
        job = _start(request, form, rows, cluster=cluster)
        if job is not None:
            return redirect("jobs:detail", job.pk)
        scanned = True
    context = {"form": form, "rows": rows, "scanned": scanned, "title": "Create a cluster"}
    if cluster is not None:
        context.update(cluster=cluster, title=f"Add hosts to {cluster.name}")
    return render(request, "clusters/create.html", context)


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
            return membership.add_hosts(
                cluster,
                specs,
                actor=request.user,
                member=data.get("member") or "",
                member_password=data.get("member_password") or "",
            )
        except Refused as exc:
            field = exc.field if exc.field in form.fields else None
            form.add_error(field, exc.message)
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


def _metadata_job(agent: str) -> Job | None:
    """The newest job reading the agent's metadata, whatever its state (a failed one shows its
    error). Read it *before* `cached_metadata`: a job finishing between the two reads then
    shows as the cached form, never as neither (a page with no form and nothing polling)."""
    step = (
        JobStep.objects.filter(kind="fence_metadata", args__agent=agent)
        .select_related("job")
        .order_by("-pk")
        .first()
    )
    return step.job if step is not None else None


def _any_online_host(cluster: Cluster) -> Host | None:
    return Host.objects.filter(cluster=cluster, state="online").order_by("name").first()


class FenceList(InCluster, ObjectListView):
    template_name = "clusters/fence_list.html"
    context_object_name = "devices"
    tab = "fence"
    heading, add = "Fence devices", ("clusters:fence-new", "New fence device")

    def get_queryset(self) -> Any:
        return FenceDevice.objects.filter(cluster=self.cluster).select_related("host")

    def extra_context(self) -> dict[str, Any]:
        hosts = Host.objects.filter(cluster=self.cluster).prefetch_related(
            Prefetch("fence_devices", queryset=FenceDevice.objects.order_by("order", "name"))
        )
        return {"hosts": hosts}


class FenceEdit(InCluster, ObjectEditView):
    """A fence device: first its agent (a form of its own), then the agent's parameters as read
    from its metadata (a job on a host while none is cached), then the device's form."""

    model = FenceDevice
    form_class = FenceDeviceForm
    pk_kwarg = "device_pk"
    what = "fence device"
    template_name = "clusters/fence_form.html"
    sensitive = True

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        device = self.object
        self.agent = (
            device.agent if device else (request.GET.get("agent") or request.POST.get("agent"))
        )
        agent_form = FenceAgentForm({"agent": self.agent} if self.agent else None)
        if not self.agent or not agent_form.is_valid():
            return self.show(
                "clusters/fence_agent.html", {"form": agent_form, "agents": COMMON_FENCE_AGENTS}
            )
        job = _metadata_job(self.agent)
        metadata = cached_metadata(self.agent)
        if metadata is None:
            return self.show("clusters/fence_metadata.html", {"agent": self.agent, "job": job})
        self.metadata = metadata
        return super().dispatch(request, *args, **kwargs)

    def form_kwargs(self) -> dict[str, Any]:
        initial = (
            {"host": self.request.GET.get("host"), "order": 1} if self.object is None else None
        )
        return {
            **super().form_kwargs(),
            "agent": self.agent,
            "parameters": list(self.metadata.get("parameters") or []),
            "initial": initial,
        }

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        if "name" not in request.POST:  # the agent was just chosen: its empty form
            return self.get(request, *args, **kwargs)
        return super().post(request, *args, **kwargs)

    def title(self) -> str:
        return f"{'Edit' if self.object else 'New'} fence device ({self.agent})"

    def context(self, form: Any) -> dict[str, Any]:
        return {"agent": self.agent, "metadata": self.metadata, "device": self.object}

    def success_url(self) -> str:
        return reverse("clusters:fence", args=[self.cluster.pk])


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
    job = _metadata_job(agent)
    if request.method == "POST" and (job is None or job.over):
        host = _any_online_host(cluster)
        job = jobs.create_job(
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
            {"cluster": cluster, "agent": agent, "job": job},
        )
    return redirect(url)


class FenceDelete(InCluster, ObjectDeleteView):
    model = FenceDevice
    pk_kwarg = "device_pk"
    what = "fence device"

    def consequence(self) -> str:
        return (
            f"{self.object.host.name} can then only recover with a person's acknowledgement, "
            "unless it has another device."
        )

    def success_url(self) -> str:
        return reverse("clusters:fence", args=[self.cluster.pk])


class FenceTest(InCluster, ActionView):
    """Run the agent with ``action=status`` from another host: proves address and secrets."""

    read = "admin"
    write = "admin"

    def load(self) -> None:
        super().load()
        self.device = get_object_or_404(
            FenceDevice.objects.select_related("host"),
            pk=self.kwargs["device_pk"],
            cluster=self.cluster,
        )

    def back_url(self) -> str:
        return reverse("clusters:fence", args=[self.cluster.pk])

    def perform(self) -> HttpResponseBase:
        job = cluster_services.fence_test(self.cluster, self.device, actor=self.request.user)
        return redirect("jobs:detail", job.pk)
