"""Jobs: the list, and one job's page with its steps (grouped by host), progress bar, exact
errors and log — refreshed live by an htmx fragment until the job ends."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from console.core.generic import ObjectListView
from console.core.views import role_required
from console.jobs.filtersets import JobFilterSet
from console.jobs.models import FINISHED_STATUSES, Job, JobStatus, JobStep

BOOTSTRAP_STEPS = (
    "bootstrap.connect",
    "bootstrap.install",
    "bootstrap.configure",
    "bootstrap.register",
)
STEP_LABELS = {
    "bootstrap.connect": "connect",
    "bootstrap.install": "install agent",
    "bootstrap.configure": "configure libvirt migration",
    "bootstrap.register": "register",
}


class JobList(ObjectListView):
    template_name = "jobs/job_list.html"
    htmx_template_name = "jobs/_job_rows.html"
    filterset = JobFilterSet
    paginate_by = 50

    def get_queryset(self) -> Any:
        return Job.objects.select_related("cluster", "created_by")

    def extra_context(self) -> dict[str, Any]:
        return {
            "status": self.filters["status"],
            "statuses": JobStatus.choices,
            "cluster": self.filters["cluster"],
        }


def _job_context(job: Job) -> dict[str, Any]:
    steps = list(job.steps.all())
    by_host: dict[str, dict[str, JobStep]] = {}
    for step in steps:
        if step.kind in BOOTSTRAP_STEPS:
            name = step.host.name if step.host else str(step.args.get("host", "?"))
            by_host.setdefault(name, {})[step.kind] = step
    outcome = ""
    if job.kind.startswith("storage-"):
        from console.storage.services import outcome as storage_outcome

        outcome = storage_outcome(job, steps)
    return {
        "job": job,
        "steps": steps,
        "bootstrap": by_host,
        "bootstrap_kinds": [(k, STEP_LABELS[k]) for k in BOOTSTRAP_STEPS],
        "events": list(job.events.select_related("host").order_by("seq")),
        "finished": job.status in FINISHED_STATUSES,
        "outcome": outcome,
    }


def _job(pk: int) -> Job:
    return get_object_or_404(
        Job.objects.select_related("cluster", "created_by").prefetch_related(
            Prefetch("steps", queryset=JobStep.objects.select_related("host").order_by("seq"))
        ),
        pk=pk,
    )


@role_required()
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return render(request, "jobs/job_detail.html", _job_context(_job(pk)))


@role_required()
def job_live(request: HttpRequest, pk: int) -> HttpResponse:
    return render(request, "jobs/_job_live.html", _job_context(_job(pk)))
