"""The event log with filters (host, service, kind, time), and failovers as incidents."""

from __future__ import annotations

from typing import Any

from console.clusters.models import Cluster
from console.core.generic import ObjectListView
from console.events.filtersets import PERIODS, EventFilterSet, IncidentFilterSet
from console.events.incidents import incidents
from console.events.models import Event, EventResult, Severity

INCIDENTS_PER_PAGE = 10
GUESTS_SHOWN = 25  # per incident; the rest are counted (a host of 80 guests stays readable)


class EventList(ObjectListView):
    template_name = "events/event_list.html"
    filterset = EventFilterSet
    paginate_by = 100

    def get_queryset(self) -> Any:
        return Event.objects.select_related("cluster")

    def extra_context(self) -> dict[str, Any]:
        kinds = Event.objects.order_by("verb").values_list("verb", flat=True).distinct()
        return {
            "f": self.filters,
            "kinds": list(kinds),
            "clusters": Cluster.objects.all(),
            "results": EventResult.choices,
            "severities": Severity.choices,
            "periods": list(PERIODS),
        }


class IncidentList(ObjectListView):
    """Failovers and crashes, each built from the events of its time (events/incidents.py)."""

    template_name = "events/incidents.html"
    filterset = IncidentFilterSet
    paginate_by = INCIDENTS_PER_PAGE
    context_object_name = "incidents"

    def get_queryset(self) -> Any:
        return Event.objects.all()

    def paginated(self, rows: Any) -> Any:
        return incidents(rows, limit=100)

    def extra_context(self) -> dict[str, Any]:
        return {"guests_shown": GUESTS_SHOWN}
