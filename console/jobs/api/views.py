from console.core.api import ReadOnlyViewSet
from console.jobs.api import serializers
from console.jobs.filtersets import JobEventFilterSet, JobFilterSet
from console.jobs.models import Job, JobEvent


class JobViewSet(ReadOnlyViewSet):
    """Jobs are created by operations and the HA engine, never written directly."""

    queryset = Job.objects.prefetch_related("hosts", "steps__host")
    serializer_class = serializers.JobSerializer
    filterset_class = JobFilterSet


class JobEventViewSet(ReadOnlyViewSet):
    """A job's append-only log; poll with ``?job=ID`` (ordered by ``seq``)."""

    queryset = JobEvent.objects.all()
    serializer_class = serializers.JobEventSerializer
    filterset_class = JobEventFilterSet
