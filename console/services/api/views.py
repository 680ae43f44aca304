from __future__ import annotations

from typing import Any

from console.core.api import HavenViewSet
from console.services import services
from console.services.api import serializers
from console.services.models import FailoverDomain, VmService


class FailoverDomainViewSet(HavenViewSet):
    queryset = FailoverDomain.objects.select_related("cluster").prefetch_related(
        "members__host", "services"
    )
    serializer_class = serializers.FailoverDomainSerializer
    filterset_fields = ("cluster", "name", "ordered", "restricted", "nofailback")

    def perform_create(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        members = data.pop("members", [])
        serializer.instance = services.save_domain(
            FailoverDomain(**data), members, actor=self.request.user, verb="create"
        )

    def perform_update(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        members = data.pop("members", None)
        domain: FailoverDomain = serializer.instance
        for key, value in data.items():
            setattr(domain, key, value)
        serializer.instance = services.save_domain(
            domain, members, actor=self.request.user, verb="update"
        )

    def perform_destroy(self, instance: Any) -> None:
        services.delete_domain(instance, actor=self.request.user)


class VmServiceViewSet(HavenViewSet):
    queryset = VmService.objects.select_related("cluster", "failover_domain", "host")
    serializer_class = serializers.VmServiceSerializer
    filterset_fields = (
        "cluster",
        "name",
        "state",
        "desired_state",
        "host",
        "failover_domain",
        "recovery",
    )
