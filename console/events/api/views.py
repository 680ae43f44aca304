from console.core.api import ReadOnlyViewSet
from console.events.api import serializers
from console.events.filtersets import EventFilterSet
from console.events.models import Event


class EventViewSet(ReadOnlyViewSet):
    """The event log is append-only: read it, filter it, never change it."""

    queryset = Event.objects.all()
    serializer_class = serializers.EventSerializer
    filterset_class = EventFilterSet
