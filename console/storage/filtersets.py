"""The storage objects' lists (block devices, volume groups, logical volumes, GFS2 file
systems): their query parameters (page and API)."""

from __future__ import annotations

from console.core.filtersets import FilterSet
from console.storage.models import BlockDevice, Filesystem, LogicalVolume, VolumeGroup


class BlockDeviceFilterSet(FilterSet):
    model = BlockDevice
    fields = ("host", "host__name", "kind")


class VolumeGroupFilterSet(FilterSet):
    model = VolumeGroup
    fields = ("cluster", "name", "clustered")


class LogicalVolumeFilterSet(FilterSet):
    model = LogicalVolume
    fields = ("volume_group", "name")


class FilesystemFilterSet(FilterSet):
    model = Filesystem
    fields = ("logical_volume", "name")
