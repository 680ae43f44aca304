from __future__ import annotations

from typing import Any

from rest_framework import serializers

from console.clusters.models import Cluster, FenceDevice, Host, parameter_error
from console.core.api import HavenModelSerializer
from console.core.units import mib


class ClusterSerializer(HavenModelSerializer):
    class Meta:
        model = Cluster
        fields = [
            "id",
            "name",
            "description",
            "cpu_overcommit",
            "host_failures_to_tolerate",
            "rebalance",
            "created",
        ]
        read_only_fields = ["created"]


#: what the agent reports: written by the runtime, never through the API
REPORTED = (
    "state",
    "state_reason",
    "last_heartbeat",
    "memory_total_mb",
    "memory_free_mb",
    "cpus",
)


class HostSerializer(HavenModelSerializer):
    class Meta:
        model = Host
        fields = [
            "id",
            "cluster",
            "name",
            "address",
            *REPORTED,
            "cpu_overcommit",
            "libvirt_uri",
            "host_uuid",
            "agent_version",
            "maintenance",
            "acknowledged_down_at",
            "acknowledged_down_by",
            "ssh_fingerprint",
            "created",
        ]
        # What the agent reports is written by the runtime, never through the API.
        read_only_fields = [
            *REPORTED,
            "host_uuid",
            "agent_version",
            "maintenance",
            "acknowledged_down_at",
            "acknowledged_down_by",
            "created",
        ]
        extra_kwargs = {
            "memory_total_mb": mib("The host's memory, as its agent last reported it"),
            "memory_free_mb": mib("The host's free memory, as its agent last reported it"),
        }


class FenceDeviceSerializer(HavenModelSerializer):
    secret_parameters = serializers.DictField(
        child=serializers.CharField(max_length=512, trim_whitespace=False),
        write_only=True,
        required=False,
        help_text="Secrets (password ...): stored encrypted, never shown back.",
    )
    secret_keys = serializers.SerializerMethodField(
        help_text="Names of the stored secret parameters (values are never shown)."
    )

    class Meta:
        model = FenceDevice
        fields = [
            "id",
            "cluster",
            "name",
            "agent",
            "host",
            "plug",
            "order",
            "parameters",
            "secret_parameters",
            "secret_keys",
        ]

    def get_secret_keys(self, obj: FenceDevice) -> list[str]:
        return sorted(obj.secret_parameters)

    def validate_secret_parameters(self, value: dict[str, str]) -> dict[str, str]:
        for key, secret in value.items():
            if problem := parameter_error(key, secret, secret=True):
                raise serializers.ValidationError(problem)
        return value

    def create(self, validated_data: dict[str, Any]) -> FenceDevice:
        secrets = validated_data.pop("secret_parameters", {})
        device = FenceDevice(**validated_data)
        device.secret_parameters = secrets
        device.save()
        return device

    def update(self, instance: FenceDevice, validated_data: dict[str, Any]) -> FenceDevice:
        secrets = validated_data.pop("secret_parameters", None)
        if secrets is not None:
            instance.secret_parameters = {**instance.secret_parameters, **secrets}
        result: FenceDevice = super().update(instance, validated_data)
        return result
