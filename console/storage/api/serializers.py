from rest_framework import serializers

from console.core.api import HavenModelSerializer
from console.storage.models import BlockDevice, Filesystem, LogicalVolume, VolumeGroup


class BlockDeviceSerializer(HavenModelSerializer):
    class Meta:
        model = BlockDevice
        fields = [
            "id",
            "host",
            "path",
            "kind",
            "size_bytes",
            "model",
            "serial",
            "volume_group_name",
            "in_use",
            "probed",
        ]
        read_only_fields = ["in_use", "probed"]


class VolumeGroupSerializer(HavenModelSerializer):
    class Meta:
        model = VolumeGroup
        fields = [
            "id",
            "cluster",
            "name",
            "clustered",
            "extent_size_bytes",
            "physical_volumes",
            "size_bytes",
            "free_bytes",
        ]
        read_only_fields = ["size_bytes", "free_bytes"]

    def validate(self, attrs: dict) -> dict:  # type: ignore[type-arg]
        attrs = super().validate(attrs)
        cluster = attrs.get("cluster") or (self.instance and self.instance.cluster)
        for device in attrs.get("physical_volumes", []):
            if cluster is not None and device.host.cluster_id != cluster.pk:
                raise serializers.ValidationError(
                    {"physical_volumes": f"{device} is on a host outside cluster {cluster}."}
                )
        return attrs


class LogicalVolumeSerializer(HavenModelSerializer):
    device_path = serializers.CharField(read_only=True)

    class Meta:
        model = LogicalVolume
        fields = ["id", "volume_group", "name", "size_bytes", "device_path"]


class FilesystemSerializer(HavenModelSerializer):
    lock_table = serializers.CharField(read_only=True)

    class Meta:
        model = Filesystem
        fields = [
            "id",
            "logical_volume",
            "name",
            "lock_protocol",
            "lock_table",
            "journals",
            "mount_point",
            "in_fstab",
            "mounted_on",
        ]
        read_only_fields = ["lock_protocol"]
