"""The console's front pages: home (clusters and their health) and a health check."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from console.clusters.choices import HostState
from console.clusters.models import Cluster
from console.services.choices import ServiceState


@login_required
def home(request: HttpRequest) -> HttpResponse:
    clusters = Cluster.objects.annotate(
        hosts_total=Count("hosts", distinct=True),
        hosts_up=Count("hosts", filter=Q(hosts__state=HostState.ONLINE), distinct=True),
        services_total=Count("services", distinct=True),
        services_green=Count(
            "services", filter=Q(services__state=ServiceState.STARTED), distinct=True
        ),
    )
    return render(request, "core/home.html", {"clusters": clusters})


def healthz(request: HttpRequest) -> JsonResponse:
    """Unauthenticated liveness probe: answers as soon as the web process serves requests."""
    return JsonResponse({"status": "ok"})
