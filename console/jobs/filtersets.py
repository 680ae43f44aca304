"""The jobs' and job logs' lists: their query parameters (the jobs page and the API)."""

from __future__ import annotations

from console.core.filtersets import FilterSet
from console.jobs.models import Job, JobEvent


class JobFilterSet(FilterSet):
    """``?status=failed&cluster=3``: the jobs page offers these two; the API all four."""

    model = Job
    fields = ("cluster", "kind", "status", "hosts")


class JobEventFilterSet(FilterSet):
    model = JobEvent
    fields = ("job", "host", "level", "step")
