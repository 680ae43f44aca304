"""The event log with filters (host, service, kind, time), and failovers as incidents."""

from __future__ import annotations

import datetime as dt

from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from console.clusters.models import Cluster
from console.core.views import role_required
from console.events.incidents import incidents
from console.events.models import SEVERITY_RANK, Event, EventResult, Severity

INCIDENTS_PER_PAGE = 10
GUESTS_SHOWN = 25  # per incident; the rest are counted (a host of 80 guests stays readable)
PERIODS = {"1h": 1, "24h": 24, "7d": 24 * 7, "30d": 24 * 30}


def filtered(request: HttpRequest) -> tuple[QuerySet[Event], dict[str, str]]:
    qs = Event.objects.select_related("cluster")
    f = {
        k: request.GET.get(k, "").strip()
        for k in ("cluster", "host", "service", "kind", "result", "severity", "period")
    }
    if f["cluster"].isdigit():
        qs = qs.filter(cluster_id=int(f["cluster"]))
    if f["host"]:
        qs = qs.filter(
            Q(object_type="host", object_name=f["host"])
            | Q(data__host=f["host"])
            | Q(actor=f"agent:{f['host']}")
            | Q(message__contains=f["host"])
        )
    if f["service"]:
        qs = qs.filter(
            Q(object_type__in=("vmservice", "service"), object_name=f["service"])
            | Q(data__service=f["service"])
        )
    if f["kind"]:
        qs = qs.filter(verb=f["kind"])
    if f["result"] in EventResult.values:
        qs = qs.filter(result=f["result"])
    if f["severity"] in Severity.values:  # this severity and worse
        rank = SEVERITY_RANK[f["severity"]]
        qs = qs.filter(severity__in=[s for s, r in SEVERITY_RANK.items() if r >= rank])
    if f["period"] in PERIODS:
        qs = qs.filter(time__gte=timezone.now() - dt.timedelta(hours=PERIODS[f["period"]]))
    return qs, f


@role_required()
def event_list(request: HttpRequest) -> HttpResponse:
    qs, f = filtered(request)
    page = Paginator(qs, 100).get_page(request.GET.get("page"))
    kinds = Event.objects.order_by("verb").values_list("verb", flat=True).distinct()
    return render(
        request,
        "events/event_list.html",
        {
            "page": page,
            "f": f,
            "kinds": list(kinds),
            "clusters": Cluster.objects.all(),
            "results": EventResult.choices,
            "severities": Severity.choices,
            "periods": list(PERIODS),
        },
    )


@role_required()
def incident_list(request: HttpRequest) -> HttpResponse:
    qs = Event.objects.all()
    cluster = request.GET.get("cluster", "")
    if cluster.isdigit():
        qs = qs.filter(cluster_id=int(cluster))
    page = Paginator(incidents(qs, limit=100), INCIDENTS_PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "events/incidents.html",
        {"incidents": page, "page": page, "guests_shown": GUESTS_SHOWN},
    )
