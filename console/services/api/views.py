from __future__ import annotations

import copy
from typing import Any

from django.db.models import Prefetch
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from console.core.api import HavenViewSet
from console.ha import whatif
from console.jobs.api.serializers import JobSerializer
from console.operations import commands as operations
from console.operations.api import MoveSerializer, PredictionSerializer, job_response
from console.services import services
from console.services.api import serializers
from console.services.filtersets import FailoverDomainFilterSet, ServiceFilterSet
from console.services.models import FailoverDomain, VmService


def _operation(kind: str, body: type[MoveSerializer] | None = None) -> Any:
    """The API action ``POST services/{id}/<kind>/``: the operation (with the target host the
    ``body`` names, for a move), answered 202 with the job that carries it out."""

    def operate(self: HavenViewSet, request: Request, pk: str | None = None) -> Response:
        host = self.checked(body)["host"] if body is not None else None
        job = operations.service_command(self.get_object(), kind, actor=request.user, host=host)
        return job_response(job)

    operate.__name__ = operate.__qualname__ = kind
    routed = action(detail=True, methods=["post"])(operate)
    return extend_schema(request=body, responses={202: JobSerializer})(routed)


class FailoverDomainViewSet(HavenViewSet):
    queryset = FailoverDomain.objects.select_related("cluster").prefetch_related(
        "members__host",
        # the names alone (a domain of thousands of guests): not their XML and settings
        Prefetch("services", queryset=VmService.objects.only("id", "name", "failover_domain_id")),
    )
    serializer_class = serializers.FailoverDomainSerializer
    filterset_class = FailoverDomainFilterSet

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

    @extend_schema(
        request=serializers.FailoverDomainSerializer, responses={200: PredictionSerializer}
    )
    @action(detail=True, methods=["post"], url_path="dry-run")
    def dry_run(self, request: Request, pk: str | None = None) -> Response:
        """The moves this edit (the body of a PATCH) would cause now; nothing is saved."""
        current: FailoverDomain = self.get_object()
        body = self.get_serializer(current, data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        members = data.pop("members", None)
        edited = copy.copy(current)
        for key, value in data.items():
            setattr(edited, key, value)
        return Response(whatif.as_dict(services.preview_domain(edited, members)))


class VmServiceViewSet(HavenViewSet):
    """VM services; ``start``/``stop``/``enable``/``disable``/``migrate``/``relocate`` are
    operations that answer 202 with the job that carries them out."""

    queryset = VmService.objects.select_related("cluster", "failover_domain", "host")
    serializer_class = serializers.VmServiceSerializer
    filterset_class = ServiceFilterSet
    operator_actions = ("start", "stop", "enable", "disable", "migrate", "relocate")

    def perform_create(self, serializer: Any) -> None:
        services.save_service(serializer, actor=self.request.user, verb="create")

    def perform_update(self, serializer: Any) -> None:
        services.save_service(serializer, actor=self.request.user, verb="update")

    def perform_destroy(self, instance: Any) -> None:
        services.delete_service(instance, actor=self.request.user)

    def _preview(self, service: VmService) -> Response:
        return Response(whatif.as_dict(services.preview_service(service)))

    @extend_schema(request=serializers.VmServiceSerializer, responses={200: PredictionSerializer})
    @action(detail=True, methods=["post"], url_path="dry-run")
    def dry_run(self, request: Request, pk: str | None = None) -> Response:
        """The moves this edit (the body of a PATCH) would cause now; nothing is saved."""
        current: VmService = self.get_object()
        body = self.get_serializer(current, data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        edited = copy.copy(current)
        for key, value in body.validated_data.items():
            setattr(edited, key, value)
        return self._preview(edited)

    @extend_schema(
        request=serializers.VmServiceSerializer,
        responses={200: PredictionSerializer},
        operation_id="services_dry_run_new",
    )
    @action(detail=False, methods=["post"], url_path="dry-run")
    def dry_run_new(self, request: Request) -> Response:
        """Where this new service (the body of a POST) would start and what it would preempt;
        nothing is saved."""
        body = self.get_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        return self._preview(VmService(**body.validated_data))

    start = _operation("start")
    stop = _operation("stop")
    enable = _operation("enable")
    disable = _operation("disable")
    migrate = _operation("migrate", MoveSerializer)
    relocate = _operation("relocate", MoveSerializer)
