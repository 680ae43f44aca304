"""The event log: who did what to which object, when, and how it ended."""

from __future__ import annotations

from django.db import models

from console.clusters.models import Cluster


class EventResult(models.TextChoices):
    OK = "ok", "OK"
    FAILED = "failed", "Failed"
    REFUSED = "refused", "Refused"
    INFO = "info", "Info"


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
    message = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-time", "-id"]
        indexes = [models.Index(fields=["object_type", "object_name"])]

    def __str__(self) -> str:
        return f"{self.time:%Y-%m-%d %H:%M:%S} {self.actor} {self.verb} {self.object_name}"
