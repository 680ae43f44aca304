from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers as drf
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from console.clusters.models import Host
from console.core import validators
from console.core.api import HavenViewSet
from console.jobs.api.serializers import JobSerializer
from console.operations.api import job_response
from console.storage import services
from console.storage.api import serializers
from console.storage.filtersets import (
    BlockDeviceFilterSet,
    FilesystemFilterSet,
    LogicalVolumeFilterSet,
    VolumeGroupFilterSet,
)
from console.storage.models import BlockDevice, Filesystem, LogicalVolume, VolumeGroup


class HostField(drf.SlugRelatedField):  # type: ignore[type-arg]
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            slug_field="name",
            queryset=Host.objects.select_related("cluster"),
            help_text="The host whose agent runs it (by name).",
            **kwargs,
        )


class ProbeSerializer(drf.Serializer):  # type: ignore[type-arg]
    host = HostField()


class VolumeGroupCreateSerializer(drf.Serializer):  # type: ignore[type-arg]
    host = HostField()
    name = drf.CharField(max_length=127, validators=[validators.validate_vg_name])
    devices = drf.ListField(
        child=drf.CharField(max_length=255, validators=[validators.validate_device_path]),
        min_length=1,
        help_text="Device paths on that host (as a probe reported them).",
    )
    local = drf.BooleanField(
        default=False,
        help_text="true only when lvmlockd cannot run: a VG without clustered locking.",
    )
    extent_size_bytes = drf.IntegerField(default=services.DEFAULT_EXTENT, min_value=1024)


class Gfs2CreateSerializer(drf.Serializer):  # type: ignore[type-arg]
    host = HostField()
    volume_group = drf.PrimaryKeyRelatedField(queryset=VolumeGroup.objects.all())
    name = drf.CharField(
        max_length=30, validators=[validators.validate_lv_name, validators.validate_fs_name]
    )
    size_bytes = drf.IntegerField(min_value=8 * 1024 * 1024)
    fs_name = drf.CharField(
        max_length=30,
        required=False,
        default="",
        allow_blank=True,
        help_text="Default: the LV's name.",
    )
    mount_point = drf.CharField(
        max_length=255,
        required=False,
        default="",
        allow_blank=True,
        help_text="Default: /mnt/NAME.",
    )
    journals = drf.IntegerField(
        min_value=1, max_value=256, required=False, help_text="Default: one per host."
    )

    def validate_fs_name(self, value: str) -> str:
        if value:
            validators.validate_fs_name(value)
        return value

    def validate_mount_point(self, value: str) -> str:
        if value:
            validators.validate_mount_point(value)
        return value


class ExtendSerializer(drf.Serializer):  # type: ignore[type-arg]
    host = HostField()
    size_bytes = drf.IntegerField(min_value=1, help_text="The new total size.")


class RemoveSerializer(drf.Serializer):  # type: ignore[type-arg]
    host = HostField()
    unmount = drf.BooleanField(
        default=False,
        help_text="Unmount it and drop its fstab line on every host first; without it a host "
        "where it is mounted refuses, and nothing changes.",
    )


class JournalsSerializer(drf.Serializer):  # type: ignore[type-arg]
    host = HostField()  # where it is mounted: gfs2_jadd runs there
    journals = drf.IntegerField(min_value=1, max_value=16, default=1)


def _same_cluster(host: Host, cluster_id: int, field: str) -> Response | None:
    if host.cluster_id != cluster_id:
        return Response(
            {field: [f"Host {host.name} is in another cluster."]},
            status=status.HTTP_400_BAD_REQUEST,
        )
    return None


class BlockDeviceViewSet(HavenViewSet):
    queryset = BlockDevice.objects.select_related("host")
    serializer_class = serializers.BlockDeviceSerializer
    filterset_class = BlockDeviceFilterSet

    @extend_schema(request=ProbeSerializer, responses={202: JobSerializer})
    @action(detail=False, methods=["post"])
    def probe(self, request: Request) -> Response:
        """Ask a host's agent for its disks, partitions, PVs, VGs and LVs."""
        body = self.checked(ProbeSerializer)
        return job_response(services.probe(body["host"], actor=request.user))


class VolumeGroupViewSet(HavenViewSet):
    queryset = VolumeGroup.objects.prefetch_related("physical_volumes")
    serializer_class = serializers.VolumeGroupSerializer
    filterset_class = VolumeGroupFilterSet

    @extend_schema(request=VolumeGroupCreateSerializer, responses={202: JobSerializer})
    @action(detail=False, methods=["post"], url_path="create-on-host")
    def create_on_host(self, request: Request) -> Response:
        """pvcreate each device and vgcreate (shared unless ``local``) on the host's agent."""
        data = self.checked(VolumeGroupCreateSerializer)
        host: Host = data["host"]
        by_path = {
            d.path: d for d in BlockDevice.objects.filter(host=host, path__in=data["devices"])
        }
        missing = [p for p in data["devices"] if p not in by_path]
        if missing:
            return Response(
                {"devices": [f"{host.name} has no probed device {', '.join(missing)}."]},
                status=status.HTTP_400_BAD_REQUEST,
            )
        job = services.create_volume_group(
            host,
            data["name"],
            [by_path[p] for p in data["devices"]],
            actor=request.user,
            local=data["local"],
            extent_size_bytes=data["extent_size_bytes"],
        )
        return job_response(job)


class LogicalVolumeViewSet(HavenViewSet):
    queryset = LogicalVolume.objects.select_related("volume_group")
    serializer_class = serializers.LogicalVolumeSerializer
    filterset_class = LogicalVolumeFilterSet

    @extend_schema(request=Gfs2CreateSerializer, responses={202: JobSerializer})
    @action(detail=False, methods=["post"], url_path="create-gfs2")
    def create_gfs2(self, request: Request) -> Response:
        """lvcreate + mkfs.gfs2 + fstab and mount on every host, in one job."""
        data = self.checked(Gfs2CreateSerializer)
        vg: VolumeGroup = data["volume_group"]
        if (refused := _same_cluster(data["host"], vg.cluster_id, "host")) is not None:
            return refused
        job = services.create_gfs2_volume(
            data["host"],
            vg,
            name=data["name"],
            size_bytes=data["size_bytes"],
            actor=request.user,
            fs_name=data["fs_name"],
            mount_point=data["mount_point"],
            journals=data.get("journals"),
        )
        return job_response(job)

    @extend_schema(request=ExtendSerializer, responses={202: JobSerializer})
    @action(detail=True, methods=["post"])
    def extend(self, request: Request, pk: str | None = None) -> Response:
        body = self.checked(ExtendSerializer)
        lv: LogicalVolume = self.get_object()
        host: Host = body["host"]
        if (refused := _same_cluster(host, lv.volume_group.cluster_id, "host")) is not None:
            return refused
        job = services.extend_volume(host, lv, body["size_bytes"], actor=request.user)
        return job_response(job)

    @extend_schema(request=RemoveSerializer, responses={202: JobSerializer})
    @action(detail=True, methods=["post"])
    def remove(self, request: Request, pk: str | None = None) -> Response:
        """Remove the LV and its GFS2: refused (400) while guests' disks are on it; the job
        fails on every host where it is mounted unless ``unmount``."""
        body = self.checked(RemoveSerializer)
        lv: LogicalVolume = self.get_object()
        host: Host = body["host"]
        if (refused := _same_cluster(host, lv.volume_group.cluster_id, "host")) is not None:
            return refused
        job = services.remove_volume(host, lv, actor=request.user, unmount=body["unmount"])
        return job_response(job)


class FilesystemViewSet(HavenViewSet):
    queryset = Filesystem.objects.select_related("logical_volume__volume_group__cluster")
    serializer_class = serializers.FilesystemSerializer
    filterset_class = FilesystemFilterSet

    @extend_schema(request=JournalsSerializer, responses={202: JobSerializer})
    @action(detail=True, methods=["post"], url_path="add-journals")
    def add_journals(self, request: Request, pk: str | None = None) -> Response:
        """gfs2_jadd on a host where it is mounted (each host that mounts it needs one)."""
        body = self.checked(JournalsSerializer)
        fs: Filesystem = self.get_object()
        host: Host = body["host"]
        cluster_id = fs.logical_volume.volume_group.cluster_id
        if (refused := _same_cluster(host, cluster_id, "host")) is not None:
            return refused
        job = services.add_journals(host, fs, body["journals"], actor=request.user)
        return job_response(job)
