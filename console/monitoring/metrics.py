"""``/metrics``: the console's state in Prometheus text format, read fresh at every scrape.

Who may scrape: an address in ``HAVEN_METRICS_ALLOW`` (comma-separated addresses or networks,
e.g. ``127.0.0.1,10.0.0.0/24``), or anyone the API would let read — a session or an API token
(``Authorization: Token …``; Prometheus: ``authorization: {type: Token, credentials_file: …}``).
Everything here is an aggregate query (a handful per scrape, whatever the cluster's size).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from rest_framework.exceptions import APIException
from rest_framework.request import Request
from rest_framework.settings import api_settings

from console.clusters.choices import HostState
from console.clusters.models import Cluster, Host
from console.core import roles
from console.events.incidents import incidents
from console.events.models import Event
from console.jobs.models import Job
from console.monitoring import ticks
from console.services.choices import ServiceState
from console.services.models import VmService

#: recovery-time buckets (seconds): a restart in place ~1 s, a failover ~3-15 s, a person later
RECOVERY_BUCKETS = (1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0)
INCIDENT_WINDOW = 1000  # incidents read for the histogram (newest first)


def _store() -> Any:
    from console.ha.tasks import store

    return store()


def _by_state(
    clusters: dict[int, str], model: Any, states: list[str], name: str, text: str
) -> GaugeMetricFamily:
    """One gauge of ``model``'s rows by cluster and state, every state of every cluster named
    (a count of 0 included), from one aggregate query."""
    family = GaugeMetricFamily(name, text, labels=["cluster", "state"])
    rows = model.objects.values_list("cluster_id", "state").annotate(n=Count("id"))
    counts = {(c, st): n for c, st, n in rows.values_list("cluster_id", "state", "n")}
    for cid, cname in clusters.items():
        for state in states:
            family.add_metric([cname, state], counts.get((cid, state), 0))
    return family


class HavenCollector:
    def collect(self) -> Iterator[Metric]:
        clusters = dict(Cluster.objects.values_list("pk", "name"))

        hosts_text = "Hosts by state, as the HA engine sees them."
        yield _by_state(clusters, Host, HostState.values, "haven_hosts", hosts_text)
        yield _by_state(
            clusters, VmService, ServiceState.values, "haven_services", "VM services by state."
        )

        fences = GaugeMetricFamily(
            "haven_fence_attempts",
            "Fence jobs by result (a counter in nature; jobs are never deleted by Haven).",
            labels=["cluster", "result"],
        )
        for cid, status, n in (
            Job.objects.filter(kind="fence")
            .values_list("cluster_id", "status")
            .annotate(n=Count("id"))
            .values_list("cluster_id", "status", "n")
        ):
            fences.add_metric([clusters.get(cid, ""), status], n)
        yield fences

        found = incidents(Event.objects.all(), limit=INCIDENT_WINDOW)
        total = GaugeMetricFamily(
            "haven_incidents",
            f"Incidents among the newest {INCIDENT_WINDOW}, by kind and whether still open.",
            labels=["cluster", "kind", "open"],
        )
        tally: dict[tuple[str, str, str], int] = {}
        for i in found:
            key = (i.cluster, i.kind, "1" if i.rto_s is None and i.guests else "0")
            tally[key] = tally.get(key, 0) + 1
        for key, n in sorted(tally.items()):
            total.add_metric(list(key), n)
        yield total

        recovery = HistogramMetricFamily(
            "haven_recovery_seconds",
            "Per-guest recovery time: from the failure noticed to the guest running again.",
            labels=["cluster", "kind"],
        )
        samples: dict[tuple[str, str], list[float]] = {}
        for i in found:
            for g in i.guests:
                if g.took_s is not None:
                    samples.setdefault((i.cluster, i.kind), []).append(g.took_s)
        for (cname, kind), values in sorted(samples.items()):
            buckets = [(f"{b:g}", sum(1 for v in values if v <= b)) for b in RECOVERY_BUCKETS]
            buckets.append(("+Inf", len(values)))
            recovery.add_metric([cname, kind], buckets, sum_value=sum(values))
        yield recovery

        yield from self._runtime(clusters)

    def _runtime(self, clusters: dict[int, str]) -> Iterator[Metric]:
        tick = GaugeMetricFamily(
            "haven_runner_tick_seconds",
            "HA runner tick duration over its last ticks.",
            labels=["cluster", "quantile"],
        )
        age = GaugeMetricFamily(
            "haven_heartbeat_age_seconds",
            "Seconds since the console last received each host's heartbeat.",
            labels=["cluster", "host"],
        )
        alarm = GaugeMetricFamily(
            "haven_alarm",
            "1 while the cluster has an alarm (e.g. a fencing storm).",
            labels=["cluster"],
        )
        for cname, text in Cluster.objects.values_list("name", "engine__alarm"):
            alarm.add_metric([cname], 1 if text else 0)
        yield alarm
        try:
            store = _store()
            now = time.time()
            for cid, cname in clusters.items():
                recent = ticks.recent_ticks(store, cid)
                for q in (0.5, 0.95, 1.0):
                    tick.add_metric([cname, f"{q:g}"], ticks.quantile(recent, q))
            names = list(Host.objects.values_list("name", "cluster_id"))
            reports = store.reports([n for n, _ in names])
            for name, cid in names:
                rep = reports.get(name)
                if rep is not None:
                    age.add_metric([clusters.get(cid, ""), name], max(0.0, now - rep.received))
        except Exception:  # Redis away: the database's metrics still answer
            up = 0
        else:
            up = 1
        yield tick
        yield age
        broker = GaugeMetricFamily("haven_broker_up", "1 when the console's Redis answers.")
        broker.add_metric([], up)
        yield broker


def _allowed_address(request: HttpRequest) -> bool:
    allow = [a.strip() for a in settings.HAVEN_METRICS_ALLOW.split(",") if a.strip()]
    if not allow:
        return False
    try:
        client = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(client in ipaddress.ip_network(a, strict=False) for a in allow)


def _may_read(request: HttpRequest) -> bool:
    classes: list[Any] = list(api_settings.DEFAULT_AUTHENTICATION_CLASSES)
    drf = Request(request, authenticators=[a() for a in classes])
    return roles.can_read(drf.user)


def metrics_view(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return JsonResponse({"detail": "Only GET."}, status=405)
    if not _allowed_address(request):
        try:
            allowed = _may_read(request)
        except APIException as exc:
            return JsonResponse({"detail": str(exc.detail)}, status=exc.status_code)
        if not allowed:
            return JsonResponse(
                {"detail": "Authentication with a role that may read is required."},
                status=401 if not request.headers.get("Authorization") else 403,
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HavenCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
