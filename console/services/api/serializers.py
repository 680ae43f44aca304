from __future__ import annotations

from typing import Any

from rest_framework import serializers

from console.core.api import HavenModelSerializer
from console.core.units import mib
from console.services.models import (
    HEALTH_FIELDS,
    POLICY_FIELDS,
    FailoverDomain,
    FailoverDomainMember,
    VmService,
)


class FailoverDomainMemberSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    host_name = serializers.CharField(source="host.name", read_only=True)

    class Meta:
        model = FailoverDomainMember
        fields = ["host", "host_name", "priority"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # A PATCH makes every field optional, also inside the members: a member is always whole.
        if "host" not in attrs:
            raise serializers.ValidationError({"host": "Each member needs its host."})
        attrs.setdefault("priority", 1)
        return attrs


class FailoverDomainSerializer(HavenModelSerializer):
    members = FailoverDomainMemberSerializer(many=True, required=False)
    services: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        many=True, read_only=True, slug_field="name"
    )

    class Meta:
        model = FailoverDomain
        fields = [
            "id",
            "cluster",
            "name",
            "ordered",
            "restricted",
            "nofailback",
            "members",
            "services",
        ]

    def validate_members(self, members: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seen: set[int] = set()
        for member in members:
            host = member["host"]
            if host.pk in seen:
                raise serializers.ValidationError(
                    f"Host {host.name} is listed twice; each host can be a member only once."
                )
            seen.add(host.pk)
        return members

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        members = attrs.pop("members", None)
        attrs = super().validate(attrs)
        cluster = attrs.get("cluster") or getattr(self.instance, "cluster", None)
        for member in members or []:
            if cluster is not None and member["host"].cluster_id != cluster.pk:
                raise serializers.ValidationError(
                    {"members": f"Host {member['host'].name} is not in cluster {cluster.name}."}
                )
        if members is not None:
            attrs["members"] = members
        return attrs


#: what the HA engine decides and the agents report: read-only in the API
ENGINE_FIELDS = ("state", "host", "target", "state_since", "state_reason", "uuid")


class VmServiceSerializer(HavenModelSerializer):
    def validate_desired_state(self, value: str) -> str:
        if self.instance is not None and value != self.instance.desired_state:
            raise serializers.ValidationError(
                "Change it with the start, stop, enable or disable operations "
                f"(POST /api/services/{self.instance.pk}/start ...), so the HA engine sees it."
            )
        return value

    class Meta:
        model = VmService
        fields = [
            "id",
            "cluster",
            "name",
            "domain_xml",
            "memory_mb",
            "vcpus",
            "autostart",
            *POLICY_FIELDS,
            "desired_state",
            *ENGINE_FIELDS,
            *HEALTH_FIELDS,
        ]
        read_only_fields = [
            "memory_mb",
            "vcpus",
            *ENGINE_FIELDS,
        ]
        extra_kwargs = {"memory_mb": mib("The guest's memory, from its domain XML")}
