from console.core.api import HavenViewSet
from console.storage.api import serializers
from console.storage.models import BlockDevice, Filesystem, LogicalVolume, VolumeGroup


class BlockDeviceViewSet(HavenViewSet):
    queryset = BlockDevice.objects.select_related("host")
    serializer_class = serializers.BlockDeviceSerializer
    filterset_fields = ("host", "host__name", "kind")


class VolumeGroupViewSet(HavenViewSet):
    queryset = VolumeGroup.objects.prefetch_related("physical_volumes")
    serializer_class = serializers.VolumeGroupSerializer
    filterset_fields = ("cluster", "name", "clustered")


class LogicalVolumeViewSet(HavenViewSet):
    queryset = LogicalVolume.objects.select_related("volume_group")
    serializer_class = serializers.LogicalVolumeSerializer
    filterset_fields = ("volume_group", "name")


class FilesystemViewSet(HavenViewSet):
    queryset = Filesystem.objects.select_related("logical_volume__volume_group__cluster")
    serializer_class = serializers.FilesystemSerializer
    filterset_fields = ("logical_volume", "name")
