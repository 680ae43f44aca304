from django.db import models

from console.engine.tick import OCCUPYING


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
    """The HA engine's service states (console/engine/states.py) plus ``unknown``.

    Colours in ``SERVICE_STATE_COLOURS``: green runs, amber moves or recovers, red is down
    against the wish of a person, grey is off on purpose.
    """

    UNKNOWN = "unknown", "Unknown (the engine has not seen it yet)"
    STOPPED = "stopped", "Stopped"
    DISABLED = "disabled", "Disabled"
    STARTING = "starting", "Starting"
    STARTED = "started", "Started (running)"
    STOPPING = "stopping", "Stopping"
    MIGRATING = "migrating", "Migrating (live)"
    RELOCATING = "relocating", "Relocating (stop, then start elsewhere)"
    FENCE = "fence", "Waiting for its host to be fenced"
    RECOVERING = "recovering", "Recovering (about to start again)"
    WAITING = "waiting", "Waiting (no allowed host can take it now)"
    FAILED = "failed", "Failed (recovery limits reached)"


SERVICE_STATE_COLOURS = {
    "unknown": "grey",
    "stopped": "grey",
    "disabled": "grey",
    "starting": "amber",
    "started": "green",
    "stopping": "amber",
    "migrating": "amber",
    "relocating": "amber",
    "fence": "red",
    "recovering": "amber",
    "waiting": "red",
    "failed": "red",
}


#: states in which a guest holds memory on its host (and on its target while it moves): the
#: engine's own set, the one source for "occupies a host" (tests/console/test_choices.py)
OCCUPYING_STATES = frozenset(s.value for s in OCCUPYING)


class ProbeKind(models.TextChoices):
    """An application probe of a guest, run by the agent of the host it runs on."""

    NONE = "", "none"
    TCP = "tcp", "TCP connect"
    HTTP = "http", "HTTP GET (status below 400)"
