from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from console.core.api import HavenViewSet
from console.jobs.api.serializers import JobSerializer
from console.runtime import operations
from console.runtime.api import MoveSerializer, job_response
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
    """VM services; ``start``/``stop``/``enable``/``disable``/``migrate``/``relocate`` are
    operations that answer 202 with the job that carries them out."""

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
    operator_actions = ("start", "stop", "enable", "disable", "migrate", "relocate")

    def perform_create(self, serializer: Any) -> None:
        services.save_service(serializer, actor=self.request.user, verb="create")

    def perform_destroy(self, instance: Any) -> None:
        services.delete_service(instance, actor=self.request.user)

    def _command(self, request: Request, kind: str, host: str | None = None) -> Response:
        job = operations.service_command(self.get_object(), kind, actor=request.user, host=host)
        return job_response(job)

    @extend_schema(request=None, responses={202: JobSerializer})
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str | None = None) -> Response:
        return self._command(request, "start")

    @extend_schema(request=None, responses={202: JobSerializer})
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, pk: str | None = None) -> Response:
        return self._command(request, "stop")

    @extend_schema(request=None, responses={202: JobSerializer})
    @action(detail=True, methods=["post"])
    def enable(self, request: Request, pk: str | None = None) -> Response:
        return self._command(request, "enable")

    @extend_schema(request=None, responses={202: JobSerializer})
    @action(detail=True, methods=["post"])
    def disable(self, request: Request, pk: str | None = None) -> Response:
        return self._command(request, "disable")

    @extend_schema(request=MoveSerializer, responses={202: JobSerializer})
    @action(detail=True, methods=["post"])
    def migrate(self, request: Request, pk: str | None = None) -> Response:
        body = MoveSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return self._command(request, "migrate", body.validated_data["host"])

    @extend_schema(request=MoveSerializer, responses={202: JobSerializer})
    @action(detail=True, methods=["post"])
    def relocate(self, request: Request, pk: str | None = None) -> Response:
        body = MoveSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return self._command(request, "relocate", body.validated_data["host"])
