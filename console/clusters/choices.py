from console.core.choices import StatusChoices
from console.engine import states

_E = states.HostState


class HostState(StatusChoices, kind="host"):
    """What the console knows of a host: the engine's host states plus ``new``."""

    NEW = "new", "grey", "New (registered, agent not heard from yet)"
    ONLINE = _E.ONLINE, "green", "Online (heartbeats arriving)"
    UNREACHABLE = _E.UNREACHABLE, "red", "Unreachable (heartbeats missed)"
    FENCING = _E.FENCING, "amber", "Fencing (power-off in progress)"
    FENCED = _E.FENCED, "red", "Fenced (confirmed powered off)"
    OFFLINE = _E.OFFLINE, "grey", "Offline (down, nothing to recover)"
    MAINTENANCE = _E.MAINTENANCE, "blue", "Maintenance (drained, takes no guests)"
