"""Shared storage as each host sees it, and the clustered LVM + GFS2 built on it."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from console.clusters.models import Cluster, Host
from console.core import validators

MIB = 1024 * 1024


class BlockDevice(models.Model):
    """A disk or partition a host reported when it was last probed."""

    class Kind(models.TextChoices):
        DISK = "disk", "Disk"
        PART = "part", "Partition"
        LOOP = "loop", "Loop device"
        OTHER = "other", "Other"

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="block_devices")
    path = models.CharField(max_length=255, validators=[validators.validate_device_path])
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.DISK)
    size_bytes = models.PositiveBigIntegerField(default=0)
    model = models.CharField(max_length=128, blank=True)
    serial = models.CharField(max_length=128, blank=True)
    volume_group_name = models.CharField(max_length=127, blank=True)
    #: why this device must not become a PV (mounted, holds a file system or partitions,
    #: empty), from the last probe; empty = free
    in_use = models.CharField(max_length=255, blank=True)
    probed = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["host__name", "path"]
        constraints = [
            models.UniqueConstraint(fields=["host", "path"], name="block_device_unique_path"),
        ]

    def __str__(self) -> str:
        return f"{self.host_id and self.host.name}:{self.path}"


class VolumeGroup(models.Model):
    """An LVM volume group on shared disks; ``clustered`` = lvmlockd (``vgcreate --shared``)."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="volume_groups")
    name = models.CharField(max_length=127, validators=[validators.validate_vg_name])
    clustered = models.BooleanField(default=True)
    extent_size_bytes = models.PositiveBigIntegerField(
        default=4 * MIB, validators=[MinValueValidator(1024)]
    )
    physical_volumes = models.ManyToManyField(BlockDevice, blank=True, related_name="volume_groups")
    size_bytes = models.PositiveBigIntegerField(default=0)
    free_bytes = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["cluster__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["cluster", "name"], name="vg_unique_name"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        size = self.extent_size_bytes
        if size and (size & (size - 1)) != 0:
            raise ValidationError(
                {"extent_size_bytes": "The extent size must be a power of two (e.g. 4 MiB)."}
            )


class LogicalVolume(models.Model):
    """A logical volume in a clustered volume group."""

    volume_group = models.ForeignKey(
        VolumeGroup, on_delete=models.CASCADE, related_name="logical_volumes"
    )
    name = models.CharField(max_length=127, validators=[validators.validate_lv_name])
    size_bytes = models.PositiveBigIntegerField(validators=[MinValueValidator(1)])

    class Meta:
        ordering = ["volume_group__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["volume_group", "name"], name="lv_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.volume_group_id and self.volume_group.name}/{self.name}"

    @property
    def device_path(self) -> str:
        return f"/dev/{self.volume_group.name}/{self.name}"


class Filesystem(models.Model):
    """A GFS2 file system on a logical volume, mounted on every host of the cluster."""

    logical_volume = models.OneToOneField(
        LogicalVolume, on_delete=models.CASCADE, related_name="filesystem"
    )
    name = models.CharField(max_length=30, validators=[validators.validate_fs_name])
    lock_protocol = models.CharField(max_length=16, default="lock_dlm", editable=False)
    journals = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(256)]
    )
    mount_point = models.CharField(max_length=255, validators=[validators.validate_mount_point])
    in_fstab = models.BooleanField(default=True)
    mounted_on = models.JSONField(
        default=list,
        blank=True,
        editable=False,
        help_text="The hosts where it is mounted, as their last mount, unmount or probe said.",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def lock_table(self) -> str:
        """``cluster:fs`` as ``mkfs.gfs2 -t`` wants it."""
        return f"{self.logical_volume.volume_group.cluster.name}:{self.name}"
