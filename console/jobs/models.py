"""Jobs (Conga's batches): what a person or the HA engine asks of one or more hosts.

Status lifecycle, state by state:

- ``pending``    created, not yet sent to any agent (messages go out after the commit);
- ``dispatched`` sent to the hosts' queues, no agent has started it yet;
- ``running``    at least one agent reported it started;
- ``succeeded``  every step finished well;
- ``failed``     a step failed: ``explanation`` says which and why;
- ``lost``       a host stopped heartbeating while the job ran on it: ``explanation`` says which.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator
from django.db import models

from console.clusters.models import Cluster, Host
from console.core.choices import StatusChoices


class JobStatus(StatusChoices, kind="job"):
    PENDING = "pending", "grey", "Pending"
    DISPATCHED = "dispatched", "amber", "Dispatched"
    RUNNING = "running", "amber", "Running"
    SUCCEEDED = "succeeded", "green", "Succeeded"
    FAILED = "failed", "red", "Failed"
    LOST = "lost", "red", "Lost"


FINISHED_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.LOST})


class Job(models.Model):
    kind = models.CharField(max_length=64)
    cluster = models.ForeignKey(
        Cluster, on_delete=models.CASCADE, null=True, blank=True, related_name="jobs"
    )
    hosts = models.ManyToManyField(Host, blank=True, related_name="jobs")
    status = models.CharField(max_length=12, choices=JobStatus.choices, default=JobStatus.PENDING)
    progress = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(100)])
    explanation = models.TextField(blank=True)
    params = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="jobs",
    )
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    #: the HA-engine action this job carries out; its outcome is reported back to the engine
    action_id = models.CharField(max_length=128, blank=True, db_index=True)
    engine_notified = models.BooleanField(default=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["status"])]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} ({self.status})"

    @property
    def title(self) -> str:
        """What a person reads: the job's kind with its object and host ("start guest1 on
        et-virt05", "migrate guest1 to et-virt06", "fence et-virt05")."""
        p = self.params if isinstance(self.params, dict) else {}
        service, host = p.get("service"), p.get("host")
        target = p.get("target")
        if service and target:
            return f"{self.kind} {service} to {target}"
        if service and host:
            return f"{self.kind} {service} on {host}"
        what = service or host or p.get("device") or p.get("cluster") or ""
        return f"{self.kind} {what}".strip()

    @property
    def over(self) -> bool:
        """It succeeded, failed or was lost: nothing of it runs any more."""
        return self.status in FINISHED_STATUSES

    @property
    def by(self) -> str:
        """Who asked: the user, the name a script gave, or the HA engine."""
        if self.created_by_id is not None and self.created_by is not None:
            return self.created_by.get_username()
        p = self.params if isinstance(self.params, dict) else {}
        if p.get("by"):
            return str(p["by"])
        return "HA engine" if self.action_id else "console"


class StepStatus(StatusChoices, kind="step"):
    """A step's status; a step is coloured as a job of the same status."""

    PENDING = "pending", JobStatus.PENDING.colour, "Pending (waits for its stage)"
    DISPATCHED = (
        "dispatched",
        JobStatus.DISPATCHED.colour,
        "Dispatched (sent to the host's agent)",
    )
    SUCCEEDED = "succeeded", JobStatus.SUCCEEDED.colour, "Succeeded"
    FAILED = "failed", JobStatus.FAILED.colour, "Failed"
    LOST = "lost", JobStatus.LOST.colour, "Lost (the host went silent before answering)"
    SKIPPED = "skipped", "grey", "Skipped (an earlier step failed)"


FINISHED_STEP_STATUSES = frozenset(
    {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.LOST, StepStatus.SKIPPED}
)


class JobStep(models.Model):
    """One command for one host's agent (or for the console itself, ``host`` empty).

    Steps of one ``stage`` run at once; the next stage is sent when all of them succeeded.
    ``command_id`` is the protocol id the agent answers with. ``args`` never holds secrets:
    ``secret_ref`` names where they are read from when the step is sent.
    """

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="steps")
    seq = models.PositiveIntegerField()
    stage = models.PositiveIntegerField(default=0)
    host = models.ForeignKey(
        Host, on_delete=models.SET_NULL, null=True, blank=True, related_name="job_steps"
    )
    kind = models.CharField(max_length=64)
    command_id = models.CharField(max_length=128, unique=True)
    args = models.JSONField(default=dict, blank=True)
    secret_ref = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=12, choices=StepStatus.choices, default=StepStatus.PENDING)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    dispatched = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job_id", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="job_step_seq")]
        indexes = [models.Index(fields=["status", "host"])]

    def __str__(self) -> str:
        where = self.host.name if self.host is not None else "console"
        return f"{self.kind} on {where} ({self.status})"


class JobEvent(models.Model):
    """One line of a job's append-only log; ``seq`` orders them within the job."""

    class Level(models.TextChoices):
        INFO = "info", "Info"
        WARNING = "warning", "Warning"
        ERROR = "error", "Error"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    time = models.DateTimeField(auto_now_add=True)
    host = models.ForeignKey(Host, on_delete=models.SET_NULL, null=True, blank=True)
    step = models.CharField(max_length=64, blank=True)
    level = models.CharField(max_length=8, choices=Level.choices, default=Level.INFO)
    message = models.TextField()
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["job_id", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="job_event_seq")]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.seq} {self.message[:40]}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise ValueError("Job events are append-only; they are never changed.")
        super().save(*args, **kwargs)
