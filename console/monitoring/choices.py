from django.db import models


class HookKind(models.TextChoices):
    WEBHOOK = "webhook", "Webhook (HTTP POST of a JSON body)"
    EMAIL = "email", "E-mail (through the configured SMTP server)"


class Topic(models.TextChoices):
    """What an alert is about; each hook chooses the topics it wants."""

    INCIDENT = "incident", "Incidents (a host lost, a guest crashed or failed)"
    FENCE_FAILED = "fence-failed", "Fence failures"
    STORM = "storm", "Fencing storms (alarms)"
    ADMISSION = "admission-refused", "Admission refusals (no room for a guest)"
    TEST = "test", "Test alerts"


ALL_TOPICS = [t for t in Topic.values if t != Topic.TEST]
