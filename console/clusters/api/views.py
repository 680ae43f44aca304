from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from console.clusters import services as cluster_services
from console.clusters.api import serializers
from console.clusters.filtersets import ClusterFilterSet, FenceDeviceFilterSet, HostFilterSet
from console.clusters.models import Cluster, FenceDevice, Host
from console.core.api import HavenViewSet
from console.ha import panel, whatif
from console.jobs.api.serializers import JobSerializer
from console.operations import commands as operations
from console.operations.api import (
    AddHostsSerializer,
    FingerprintSerializer,
    ImportSerializer,
    MaintenanceSerializer,
    PolicySerializer,
    PredictionSerializer,
    RemoveHostSerializer,
    RepairHostSerializer,
    ScanKeySerializer,
    WhatIfSerializer,
    job_response,
)


class ClusterViewSet(HavenViewSet):
    """Clusters; ``what-if`` simulates a host's failure (or maintenance) on the live cluster."""

    queryset = Cluster.objects.all()
    serializer_class = serializers.ClusterSerializer
    filterset_class = ClusterFilterSet
    read_actions = ("what_if",)

    def perform_destroy(self, instance: Any) -> None:
        cluster_services.delete_cluster(instance, actor=self.request.user)

    @extend_schema(responses={200: PolicySerializer})
    @action(detail=True, methods=["get"])
    def policy(self, request: Request, pk: str | None = None) -> Response:
        """The failover capacity (admission control: "survives 1 host failure; 3.2 GiB
        spare") and the live rebalancer's plan and why, from the engine on the live cluster:
        computed once per engine tick (the tick and its age say when; console/ha/panel.py)."""
        return Response(panel.get(self.get_object()).as_dict())

    @extend_schema(request=WhatIfSerializer, responses={200: PredictionSerializer})
    @action(detail=True, methods=["post"], url_path="what-if")
    def what_if(self, request: Request, pk: str | None = None) -> Response:
        body = self.checked(WhatIfSerializer)
        try:
            prediction = whatif.predict(self.get_object(), body["host"], body["event"])
        except whatif.WhatIfError as exc:
            raise ValidationError({exc.field: [exc.message]}) from exc
        return Response(whatif.as_dict(prediction))

    @extend_schema(request=ScanKeySerializer, responses={200: FingerprintSerializer})
    @action(detail=True, methods=["post"], url_path="scan-host-key")
    def scan_host_key(self, request: Request, pk: str | None = None) -> Response:
        """Read a new host's SSH host key fingerprint, to check and pin it (admin)."""
        from console.bootstrap import ssh as bootstrap

        self.get_object()
        body = self.checked(ScanKeySerializer)
        address = body["address"]
        try:
            fingerprint = bootstrap.scan_host_key(address, port=body["port"])
        except bootstrap.BootstrapError as exc:
            raise ValidationError({"address": [str(exc)]}) from exc
        return Response({"address": address, "fingerprint": fingerprint})

    @extend_schema(request=AddHostsSerializer, responses={202: JobSerializer})
    @action(detail=True, methods=["post"], url_path="add-hosts")
    def add_hosts(self, request: Request, pk: str | None = None) -> Response:
        """Bootstrap new hosts into this cluster over SSH (admin); the bootstrap job."""
        from console.bootstrap import ssh as bootstrap
        from console.operations import membership

        body = self.checked(AddHostsSerializer)
        specs = [
            bootstrap.HostSpec(
                name=h["name"],
                address=h.get("address") or h["name"],
                password=h["password"],
                fingerprint=h["fingerprint"],
                port=h["port"],
            )
            for h in body["hosts"]
        ]
        return job_response(
            membership.add_hosts(
                self.get_object(),
                specs,
                actor=request.user,
                member=body["member"],
                member_password=body["member_password"],
            )
        )


class HostViewSet(HavenViewSet):
    """Hosts. ``DELETE`` removes a host from its cluster (console/operations/membership.py):
    refused while guests run there or while it is silent and not confirmed down; with the
    root password (``{"password": ...}``, or ``POST remove/``) its agent is uninstalled over
    SSH first. ``repair/`` runs the SSH bootstrap again, keeping its guests and history."""

    queryset = Host.objects.select_related("cluster")
    serializer_class = serializers.HostSerializer
    filterset_class = HostFilterSet
    operator_actions = ("maintenance", "acknowledge_down")

    def _remove(self, request: Request) -> Response:
        from console.operations import membership

        given = request.data if isinstance(request.data, dict) else {}
        body = self.checked(RemoveHostSerializer, given)
        job = membership.remove_host(
            self.get_object(), actor=request.user, password=body.get("password", "")
        )
        return job_response(job)

    @extend_schema(request=RemoveHostSerializer, responses={202: JobSerializer})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self._remove(request)

    @extend_schema(request=RemoveHostSerializer, responses={202: JobSerializer})
    @action(detail=True, methods=["post"])
    def remove(self, request: Request, pk: str | None = None) -> Response:
        """The same as DELETE, for clients that send no body with DELETE."""
        return self._remove(request)

    @extend_schema(request=RepairHostSerializer, responses={202: JobSerializer})
    @action(detail=True, methods=["post"])
    def repair(self, request: Request, pk: str | None = None) -> Response:
        """Run the SSH bootstrap again on this host (admin); its guests and history stay."""
        from console.operations import membership

        body = self.checked(RepairHostSerializer)
        job = membership.repair_host(
            self.get_object(),
            body["password"],
            actor=request.user,
            fingerprint=body.get("fingerprint", ""),
            port=body["port"],
        )
        return job_response(job)

    @extend_schema(request=MaintenanceSerializer, responses={202: JobSerializer})
    @action(detail=True, methods=["post"])
    def maintenance(self, request: Request, pk: str | None = None) -> Response:
        body = self.checked(MaintenanceSerializer)
        job = operations.maintenance(self.get_object(), body["on"], actor=request.user)
        return job_response(job)

    @extend_schema(request=None, responses={202: JobSerializer})
    @action(detail=True, methods=["post"], url_path="list-guests")
    def list_guests(self, request: Request, pk: str | None = None) -> Response:
        """Ask the host which guests it has; the job's step result lists them."""
        return job_response(operations.list_guests(self.get_object(), actor=request.user))

    @extend_schema(request=ImportSerializer, responses={202: JobSerializer})
    @action(detail=True, methods=["post"], url_path="import-guests")
    def import_guests(self, request: Request, pk: str | None = None) -> Response:
        """Put guests defined on this host under cluster control (their XML is read there)."""
        body = self.checked(ImportSerializer)
        job = operations.import_guests(
            self.get_object(),
            body["guests"],
            actor=request.user,
            failover_domain=body.get("failover_domain"),
        )
        return job_response(job)

    @extend_schema(request=None, responses={202: JobSerializer})
    @extend_schema(request=None, responses={202: JobSerializer})
    @action(detail=True, methods=["post"], url_path="rotate-credentials")
    def rotate_credentials(self, request: Request, pk: str | None = None) -> Response:
        """New broker password and sealing key for this host's agent (admin only), sent over
        the agent's own command channel; 409 when that cannot be done (the answer says to
        bootstrap the host again over SSH)."""
        from console.ha import credentials

        return job_response(credentials.rotate(self.get_object(), actor=request.user))

    @action(detail=True, methods=["post"], url_path="acknowledge-down")
    def acknowledge_down(self, request: Request, pk: str | None = None) -> Response:
        job = operations.acknowledge_down(self.get_object(), actor=request.user)
        return job_response(job)


class FenceDeviceViewSet(HavenViewSet):
    queryset = FenceDevice.objects.select_related("cluster", "host")
    serializer_class = serializers.FenceDeviceSerializer
    filterset_class = FenceDeviceFilterSet
