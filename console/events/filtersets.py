"""The event log's and the incidents' lists: their query parameters (pages and API).

The page's ``severity`` is "this severity and worse", the API's the exact severity: both as
they always were. The page's ``host``, ``service``, ``kind`` and ``period`` are the page's own.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import Q
from django.utils import timezone

from console.core.filtersets import API, PAGE, Exact, FilterSet, Method, one_of
from console.events.models import SEVERITY_RANK, Event, Severity

PERIODS = {"1h": 1, "24h": 24, "7d": 24 * 7, "30d": 24 * 30}


def _host(qs: Any, host: str) -> Any:
    return qs.filter(
        Q(object_type="host", object_name=host)
        | Q(data__host=host)
        | Q(actor=f"agent:{host}")
        | Q(message__contains=host)
    )


def _service(qs: Any, service: str) -> Any:
    return qs.filter(
        Q(object_type__in=("vmservice", "service"), object_name=service) | Q(data__service=service)
    )


def _at_least(qs: Any, severity: str) -> Any:
    rank = SEVERITY_RANK[severity]
    return qs.filter(severity__in=[s for s, r in SEVERITY_RANK.items() if r >= rank])


def _since(qs: Any, period: str) -> Any:
    return qs.filter(time__gte=timezone.now() - dt.timedelta(hours=PERIODS[period]))


class EventFilterSet(FilterSet):
    model = Event
    fields = ("cluster", "actor", "verb", "object_type", "object_name", "result")
    severity = Exact(surfaces={API})
    severity_at_least = Method(
        _at_least, one_of("severity", Severity.values), param="severity", surfaces={PAGE}
    )
    host = Method(_host, surfaces={PAGE})
    service = Method(_service, surfaces={PAGE})
    kind = Exact("verb", surfaces={PAGE})
    period = Method(_since, one_of("period", PERIODS), surfaces={PAGE})


class IncidentFilterSet(FilterSet):
    """Incidents are built from every event of their time: only the cluster narrows them."""

    model = Event
    fields = ("cluster",)
