from django.db import models

from console.core.choices import Choices, StatusChoices
from console.engine import states
from console.engine.tick import OCCUPYING

_S, _D, _R = states.ServiceState, states.Desired, states.Recovery


class Recovery(Choices):
    """What the cluster does when the guest stops without being asked to."""

    RESTART = _R.RESTART, "Restart (in place, up to the restart limit, then relocate)"
    RELOCATE = _R.RELOCATE, "Relocate (start on another host at once)"
    DISABLE = _R.DISABLE, "Disable (leave it stopped)"


class DesiredState(Choices):
    STARTED = _D.STARTED, "Started"
    STOPPED = _D.STOPPED, "Stopped"
    DISABLED = _D.DISABLED, "Disabled"


class ServiceState(StatusChoices, kind="service", occupying=OCCUPYING):
    """The HA engine's service states (console/engine/states.py) plus ``unknown``: green runs,
    amber moves or recovers, red is down against the wish of a person, grey is off on purpose.
    A guest occupies its host in the engine's own ``OCCUPYING`` states."""

    UNKNOWN = "unknown", "grey", "Unknown (the engine has not seen it yet)"
    STOPPED = _S.STOPPED, "grey", "Stopped"
    DISABLED = _S.DISABLED, "grey", "Disabled"
    STARTING = _S.STARTING, "amber", "Starting"
    STARTED = _S.STARTED, "green", "Started (running)"
    STOPPING = _S.STOPPING, "amber", "Stopping"
    MIGRATING = _S.MIGRATING, "amber", "Migrating (live)"
    RELOCATING = _S.RELOCATING, "amber", "Relocating (stop, then start elsewhere)"
    FENCE = _S.FENCE, "red", "Waiting for its host to be fenced"
    RECOVERING = _S.RECOVERING, "amber", "Recovering (about to start again)"
    WAITING = _S.WAITING, "red", "Waiting (no allowed host can take it now)"
    FAILED = _S.FAILED, "red", "Failed (recovery limits reached)"


#: states in which a guest holds memory on its host (and on its target while it moves): the
#: engine's own set, the one source for "occupies a host" (tests/console/test_choices.py)
OCCUPYING_STATES = ServiceState.occupying()


class ProbeKind(models.TextChoices):
    """An application probe of a guest, run by the agent of the host it runs on."""

    NONE = "", "none"
    TCP = "tcp", "TCP connect"
    HTTP = "http", "HTTP GET (status below 400)"
