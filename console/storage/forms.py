"""Storage forms (Conga's storage tab): a clustered VG, an LV with GFS2, extending an LV."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from console.clusters.models import Host
from console.core import validators
from console.storage.models import MIB, BlockDevice, VolumeGroup


class VolumeGroupForm(forms.Form):
    name = forms.CharField(
        label="Volume group name", max_length=127, validators=[validators.validate_vg_name]
    )
    devices = forms.ModelMultipleChoiceField(
        queryset=BlockDevice.objects.none(),
        widget=forms.CheckboxSelectMultiple,
        help_text="Shared disks every host sees. Their contents are lost.",
    )
    extent_size_mib = forms.IntegerField(
        label="Extent size (MiB)",
        initial=4,
        min_value=1,
        max_value=1024,
        help_text="LVM allocates space in extents of this size; 4 MiB suits nearly everything.",
    )
    local = forms.BooleanField(
        label="Local VG (no clustered locking)",
        required=False,
        help_text="Only when lvmlockd cannot run on these hosts: the VG is then not protected "
        "against two hosts changing it at once. Without this, a host lacking lvmlockd answers "
        "'clustered locking unavailable'.",
    )

    def __init__(self, *args: Any, host: Host, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        free = BlockDevice.objects.filter(host=host, volume_group_name="", in_use="").order_by(
            "path"
        )
        self.fields["devices"].queryset = free  # type: ignore[attr-defined]
        if not free.exists():
            self.fields["devices"].help_text = (
                "No free device on this host: probe its disks first (devices in a volume "
                "group, mounted, holding a file system or partitions are not offered)."
            )
        self.fields["devices"].label_from_instance = (  # type: ignore[attr-defined]
            lambda d: f"{d.path} ({d.get_kind_display().lower()}, {d.size_bytes // MIB} MiB)"
        )

    def clean_extent_size_mib(self) -> int:
        value: int = self.cleaned_data["extent_size_mib"]
        if value & (value - 1):
            raise ValidationError("The extent size must be a power of two: 1, 2, 4, 8 … MiB.")
        return value


class Gfs2VolumeForm(forms.Form):
    volume_group = forms.ModelChoiceField(queryset=VolumeGroup.objects.none(), empty_label=None)
    name = forms.CharField(
        label="Name",
        max_length=30,
        validators=[validators.validate_lv_name, validators.validate_fs_name],
        help_text="Used for the logical volume, the file system and the mount point "
        "(/mnt/NAME) unless you change them below.",
    )
    size_mib = forms.IntegerField(label="Size (MiB)", min_value=8)
    fs_name = forms.CharField(
        label="File system name",
        required=False,
        max_length=30,
        validators=[validators.validate_fs_name],
        help_text="Second half of the lock table CLUSTER:NAME.",
    )
    mount_point = forms.CharField(
        label="Mount point",
        required=False,
        max_length=255,
        validators=[validators.validate_mount_point],
    )
    journals = forms.IntegerField(label="Journals", min_value=1, max_value=256)

    def __init__(self, *args: Any, host: Host, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.host_count = Host.objects.filter(cluster_id=host.cluster_id).count()
        self.fields["volume_group"].queryset = VolumeGroup.objects.filter(  # type: ignore[attr-defined]
            cluster_id=host.cluster_id
        )
        self.fields["journals"].initial = self.host_count
        self.fields["journals"].help_text = (
            f"One per host that mounts it: this cluster has {self.host_count} host(s). "
            "Fewer journals leave some hosts unable to mount it."
        )

    @property
    def journal_warning(self) -> str:
        journals = self.cleaned_data.get("journals") if hasattr(self, "cleaned_data") else None
        if journals is not None and journals < self.host_count:
            return (
                f"Only {journals} journal(s) for {self.host_count} hosts: "
                f"{self.host_count - journals} host(s) will not be able to mount it."
            )
        return ""


class ExtendForm(forms.Form):
    size_mib = forms.IntegerField(label="New size (MiB)", min_value=1)


class JournalsForm(forms.Form):
    journals = forms.IntegerField(
        label="Journals to add",
        min_value=1,
        max_value=16,
        initial=1,
        help_text="One per host that will mount it; runs gfs2_jadd on this host, where it must "
        "be mounted.",
    )


class RemoveForm(forms.Form):
    unmount = forms.BooleanField(
        label="Unmount it on every host first (and drop its fstab lines)",
        required=False,
        help_text="Without this, a host where it is mounted refuses the removal and nothing "
        "changes.",
    )
