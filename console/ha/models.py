"""What the runtime keeps between ticks: the engine's status, and people's commands."""

from __future__ import annotations

from django.db import models

from console.clusters.models import Cluster
from console.jobs.models import Job


class EngineState(models.Model):
    """The HA engine's status for one cluster (``Status.to_json()``), saved after every tick."""

    cluster = models.OneToOneField(Cluster, on_delete=models.CASCADE, related_name="engine")
    status_json = models.TextField(default="")
    alarm = models.TextField(blank=True)
    ticks = models.PositiveBigIntegerField(default=0)
    updated = models.DateTimeField(auto_now=True)
    #: bumped in the writer's transaction by every save or delete of the cluster's hosts, fence
    #: devices, services, failover domains and members (console/ha/apps.py): the runner
    #: reads its configuration again only when this moved (console/ha/snapshot.py)
    config_version = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"engine of {self.cluster_id and self.cluster.name}"


class EngineServiceStatus(models.Model):
    """One service's part of the engine's status (``ServiceStatus`` as JSON), written only when
    it changed: ``EngineState.status_json`` holds the rest (hosts, pending actions, counters).
    ``tick``: the tick that last wrote it, so a runner process that holds an earlier status
    reads only what changed since (console/ha/snapshot.py)."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=64)
    status_json = models.TextField()
    tick = models.PositiveBigIntegerField(default=0, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["cluster", "name"], name="one_status_per_service")
        ]

    def __str__(self) -> str:
        return f"engine status of {self.name}"


class PendingCommand(models.Model):
    """A person's start/stop/enable/disable/migrate/relocate, waiting for the engine's reply.

    The engine answers every command: ``accepted`` (applied), ``queued`` (applied when the
    service settles) or ``refused`` (with a reason). The command's job shows it to people.
    """

    class Outcome(models.TextChoices):
        NEW = "new", "Not yet seen by the engine"
        QUEUED = "queued", "Queued until the service settles"
        ACCEPTED = "accepted", "Accepted"
        REFUSED = "refused", "Refused"

    command_id = models.CharField(max_length=64, unique=True)
    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="commands")
    kind = models.CharField(max_length=16)
    service = models.CharField(max_length=64)
    node = models.CharField(max_length=253, blank=True)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="commands")
    actor = models.CharField(max_length=150)
    delivered = models.BooleanField(default=False)
    outcome = models.CharField(max_length=8, choices=Outcome.choices, default=Outcome.NEW)
    reason = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created", "id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.service} ({self.outcome})"


class AgentCredential(models.Model):
    """One agent's broker identity (console/ha/credentials.py), by host name (the console's
    own agent has no host row).

    The Redis password is never stored: only its SHA-256, which is what ``ACL SETUSER`` takes,
    so the console can re-create the user whenever Redis lost it. The sealing key (Fernet, for
    the secrets sent to this agent alone) is stored encrypted with the console's key.
    """

    name = models.CharField(max_length=253, unique=True)
    password_sha256 = models.CharField(max_length=64)
    seal_key_encrypted = models.TextField(blank=True)
    # a rotation under way: the new password's hash, and the new password and sealing key
    # (encrypted) until the agent confirms it keeps them
    pending_sha256 = models.CharField(max_length=64, blank=True)
    pending_encrypted = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    rotated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"broker credential of {self.name}"
