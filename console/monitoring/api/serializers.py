from __future__ import annotations

from typing import Any

from rest_framework import serializers

from console.core.api import HavenModelSerializer
from console.monitoring import services
from console.monitoring.choices import Topic
from console.monitoring.models import AlertHook


class AlertHookSerializer(HavenModelSerializer):
    topics = serializers.ListField(
        child=serializers.ChoiceField(choices=Topic.choices), allow_empty=False, required=False
    )
    signing_key = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        max_length=200,
        help_text="Webhook only: signs each body (X-Haven-Signature: sha256=HMAC). Never shown.",
    )
    signed = serializers.SerializerMethodField()

    class Meta:
        model = AlertHook
        fields = [
            "id",
            "name",
            "kind",
            "url",
            "email_to",
            "topics",
            "cluster",
            "enabled",
            "signing_key",
            "signed",
            "last_sent_at",
            "last_result",
        ]
        read_only_fields = ["last_sent_at", "last_result"]

    def get_signed(self, obj: AlertHook) -> bool:
        return bool(obj.secret)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        key = attrs.pop("signing_key", None)
        attrs = super().validate(attrs)
        if key is not None:
            attrs["signing_key"] = key
        return attrs

    def _save(self, hook: AlertHook, attrs: dict[str, Any]) -> AlertHook:
        key = attrs.pop("signing_key", None)
        for field, value in attrs.items():
            setattr(hook, field, value)
        if key is not None:
            services.set_signing_key(hook, key)
        hook.save()
        return hook

    def create(self, validated_data: dict[str, Any]) -> AlertHook:
        return self._save(AlertHook(), validated_data)

    def update(self, instance: AlertHook, validated_data: dict[str, Any]) -> AlertHook:
        return self._save(instance, validated_data)


class AlertTestResultSerializer(serializers.Serializer):  # type: ignore[type-arg]
    hook = serializers.CharField()
    result = serializers.CharField()
