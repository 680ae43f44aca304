"""The home page: every cluster with its health badges."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from console.clusters.choices import HostState
from console.clusters.models import Cluster, Host
from console.core.views import role_required
from console.services.choices import ServiceState
from console.services.models import VmService


def cluster_health() -> list[Any]:
    """Every cluster with the counts its health badges need: three aggregate queries whatever
    the size (grouped counts per cluster, never a join of hosts with services)."""
    from console.services.filtersets import PROBLEM

    clusters = list(Cluster.objects.select_related("engine").order_by("name"))
    hosts = {
        row["cluster_id"]: row
        for row in Host.objects.values("cluster_id").annotate(
            total=Count("id"), up=Count("id", filter=Q(state=HostState.ONLINE))
        )
    }
    services = {
        row["cluster_id"]: row
        for row in VmService.objects.values("cluster_id").annotate(
            total=Count("id"),
            green=Count("id", filter=Q(state=ServiceState.STARTED)),
            red=Count("id", filter=PROBLEM),
        )
    }
    for c in clusters:
        h, s = hosts.get(c.pk, {}), services.get(c.pk, {})
        c.hosts_total, c.hosts_up = h.get("total", 0), h.get("up", 0)  # type: ignore[attr-defined]
        c.services_total = s.get("total", 0)  # type: ignore[attr-defined]
        c.services_green, c.services_red = s.get("green", 0), s.get("red", 0)  # type: ignore[attr-defined]
    return clusters


@role_required()
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "core/home.html", {"clusters": cluster_health()})
