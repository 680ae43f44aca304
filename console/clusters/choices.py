from django.db import models


class HostState(models.TextChoices):
    """What the console knows of a host; colours in ``HOST_STATE_COLOURS``."""

    NEW = "new", "New (registered, agent not heard from yet)"
    ONLINE = "online", "Online (heartbeats arriving)"
    UNREACHABLE = "unreachable", "Unreachable (heartbeats missed)"
    FENCING = "fencing", "Fencing (power-off in progress)"
    FENCED = "fenced", "Fenced (confirmed powered off)"
    OFFLINE = "offline", "Offline (down, nothing to recover)"
    MAINTENANCE = "maintenance", "Maintenance (drained, takes no guests)"


HOST_STATE_COLOURS = {
    "new": "grey",
    "online": "green",
    "unreachable": "red",
    "fencing": "amber",
    "fenced": "red",
    "offline": "grey",
    "maintenance": "blue",
}
