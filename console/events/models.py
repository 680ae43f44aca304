"""The event log: who did what to which object, when, and how it ended."""

from __future__ import annotations

from django.db import models

from console.clusters.models import Cluster
from console.core.choices import StatusChoices


class EventResult(StatusChoices, kind="event"):
    OK = "ok", "green", "OK"
    FAILED = "failed", "red", "Failed"
    REFUSED = "refused", "amber", "Refused"
    INFO = "info", "grey", "Info"


class Severity(StatusChoices, kind="severity"):
    """How much an event matters to a person; the log colours and filters by it."""

    INFO = "info", "grey", "Info"  # routine: a job ran, a guest started where it should
    WARNING = (
        "warning",
        "amber",
        "Warning",
    )  # needs a look: a refusal, a host offline, a fence retry
    ERROR = "error", "red", "Error"  # something failed: a guest crashed, a fence failed
    # availability at stake: a host lost, a storm, a guest failed
    CRITICAL = "critical", "red strong", "Critical"


SEVERITY_RANK = {s: i for i, s in enumerate(Severity.values)}


class Event(models.Model):
    time = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.CharField(max_length=150, help_text="User name, 'engine' or 'agent:<host>'.")
    verb = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64, blank=True)
    object_name = models.CharField(max_length=255, blank=True)
    cluster = models.ForeignKey(
        Cluster, on_delete=models.SET_NULL, null=True, blank=True, related_name="events"
    )
    result = models.CharField(max_length=8, choices=EventResult.choices, default=EventResult.OK)
    severity = models.CharField(
        max_length=8, choices=Severity.choices, default=Severity.INFO, db_index=True
    )
    message = models.TextField(blank=True)
    data = models.JSONField(
        default=dict,
        blank=True,
        help_text="Typed details: for state changes kind, old, new, reason and hosts.",
    )

    class Meta:
        ordering = ["-time", "-id"]
        indexes = [models.Index(fields=["object_type", "object_name"])]

    def __str__(self) -> str:
        return f"{self.time:%Y-%m-%d %H:%M:%S} {self.actor} {self.verb} {self.object_name}"
