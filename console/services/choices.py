from django.db import models


class Recovery(models.TextChoices):
    """What the cluster does when the guest stops without being asked to."""

    RESTART = "restart", "Restart (in place, up to the restart limit, then relocate)"
    RELOCATE = "relocate", "Relocate (start on another host at once)"
    DISABLE = "disable", "Disable (leave it stopped)"


class DesiredState(models.TextChoices):
    STARTED = "started", "Started"
    STOPPED = "stopped", "Stopped"
    DISABLED = "disabled", "Disabled"


class ServiceState(models.TextChoices):
    """What the runtime last saw; colours in ``SERVICE_STATE_COLOURS``."""

    UNKNOWN = "unknown", "Unknown (not seen yet)"
    STARTING = "starting", "Starting"
    STARTED = "started", "Started (running)"
    STOPPING = "stopping", "Stopping"
    STOPPED = "stopped", "Stopped"
    MIGRATING = "migrating", "Migrating (live)"
    RECOVERING = "recovering", "Recovering (restart or relocation under way)"
    WAITING = "waiting", "Waiting (no allowed host can take it now)"
    FAILED = "failed", "Failed (recovery limits reached)"
    DISABLED = "disabled", "Disabled"


SERVICE_STATE_COLOURS = {
    "unknown": "grey",
    "starting": "amber",
    "started": "green",
    "stopping": "amber",
    "stopped": "red",
    "migrating": "amber",
    "recovering": "amber",
    "waiting": "red",
    "failed": "red",
    "disabled": "grey",
}
