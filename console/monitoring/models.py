"""Alert hooks: where the console sends word of incidents, fence failures, storms and refusals."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_email
from django.db import models

from console.clusters.models import Cluster
from console.monitoring.choices import ALL_TOPICS, HookKind, Topic


def default_topics() -> list[str]:
    return list(ALL_TOPICS)


class AlertHook(models.Model):
    name = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=8, choices=HookKind.choices, default=HookKind.WEBHOOK)
    url = models.CharField(
        max_length=500, blank=True, help_text="Webhook: the http(s) address that gets the POST."
    )
    email_to = models.CharField(
        max_length=500, blank=True, help_text="E-mail: addresses, separated by commas."
    )
    topics = models.JSONField(default=default_topics, help_text="Which alerts this hook gets.")
    cluster = models.ForeignKey(
        Cluster,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="alert_hooks",
        help_text="Only this cluster's alerts (empty: every cluster).",
    )
    enabled = models.BooleanField(default=True)
    secret = models.TextField(
        blank=True,
        editable=False,
        help_text="Encrypted webhook signing key (HMAC-SHA256 in X-Haven-Signature).",
    )
    last_sent_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_result = models.CharField(max_length=500, blank=True, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def recipients(self) -> list[str]:
        return [a.strip() for a in self.email_to.split(",") if a.strip()]

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.kind == HookKind.WEBHOOK:
            try:
                URLValidator(schemes=["http", "https"])(self.url)
            except ValidationError:
                errors["url"] = "Give the webhook's http:// or https:// address."
        elif self.kind == HookKind.EMAIL:
            addresses = self.recipients()
            if not addresses:
                errors["email_to"] = "Give at least one e-mail address."
            for address in addresses:
                try:
                    validate_email(address)
                except ValidationError:
                    errors["email_to"] = f"{address!r} is not an e-mail address."
        topics = self.topics
        if not isinstance(topics, list) or not topics:
            errors["topics"] = "Choose at least one topic."
        else:
            unknown = [t for t in topics if t not in Topic.values]
            if unknown:
                errors["topics"] = f"Unknown topics: {', '.join(map(str, unknown))}."
        if errors:
            raise ValidationError(errors)
