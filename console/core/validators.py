"""Validators for every name that may reach a command line (lvcreate, virsh, ssh, mount).

Each is a strict allow-list: a name that passes can be put in an argv list safely and means the
same thing to the tool that receives it. The messages say what is allowed, in plain words.
"""

from __future__ import annotations

import ipaddress
import re

from django.core.exceptions import ValidationError

# A cluster name is the first half of a GFS2 lock table (``cluster:fs``); Conga kept it to 15.
CLUSTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,14}$")
# The GFS2 file-system half of the lock table: at most 30 characters.
FS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,29}$")
# RFC 1123 host name (labels of letters, digits and hyphens).
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
# libvirt allows almost anything in a domain name; Haven allows what is safe everywhere.
GUEST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
# LVM's own rule for VG and LV names, minus the reserved forms checked below.
LVM_NAME_RE = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9_.+-]{0,126}$")
LVM_RESERVED_LV_PARTS = (
    "_cdata",
    "_cmeta",
    "_corig",
    "_mlog",
    "_mimage",
    "_pmspare",
    "_rimage",
    "_rmeta",
    "_tdata",
    "_tmeta",
    "_vorigin",
    "_vdata",
)
LVM_RESERVED_LV_NAMES = ("snapshot", "pvmove")
FENCE_AGENT_RE = re.compile(r"^fence_[a-z0-9_]{1,60}$")
# Absolute mount point made of plain path segments.
MOUNT_POINT_RE = re.compile(r"^(/[A-Za-z0-9_.+-]+)+$")
DEVICE_PATH_RE = re.compile(r"^/dev(/[A-Za-z0-9_.+:-]+)+$")
OBJECT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _check(regex: re.Pattern[str], value: str, what: str, rule: str) -> None:
    if not isinstance(value, str) or not regex.match(value):
        raise ValidationError(f"{value!r} is not a valid {what}: {rule}.", code="invalid")


def validate_cluster_name(value: str) -> None:
    _check(
        CLUSTER_NAME_RE,
        value,
        "cluster name",
        "use 1 to 15 letters, digits, '-' or '_', starting with a letter or digit "
        "(it becomes part of the GFS2 lock table)",
    )


def validate_fs_name(value: str) -> None:
    _check(
        FS_NAME_RE,
        value,
        "file system name",
        "use 1 to 30 letters, digits, '-' or '_', starting with a letter or digit",
    )


def validate_hostname(value: str) -> None:
    _check(
        HOSTNAME_RE,
        value,
        "host name",
        "use letters, digits and '-' in dot-separated labels, with no spaces",
    )


def validate_address(value: str) -> None:
    """A host name or an IPv4/IPv6 address, as SSH and libvirt URIs accept them."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        _check(HOSTNAME_RE, value, "host address", "give an IP address or a host name")


def validate_guest_name(value: str) -> None:
    _check(
        GUEST_NAME_RE,
        value,
        "guest name",
        "use up to 64 letters, digits, '.', '_', '+' or '-', starting with a letter or digit",
    )


def validate_object_name(value: str) -> None:
    _check(
        OBJECT_NAME_RE,
        value,
        "name",
        "use up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
    )


def validate_vg_name(value: str) -> None:
    _check(
        LVM_NAME_RE,
        value,
        "volume group name",
        "use letters, digits, '.', '_', '+' or '-', not starting with '-'",
    )
    if value in (".", ".."):
        raise ValidationError(f"{value!r} is not a valid volume group name.", code="invalid")


def validate_lv_name(value: str) -> None:
    _check(
        LVM_NAME_RE,
        value,
        "logical volume name",
        "use letters, digits, '.', '_', '+' or '-', not starting with '-'",
    )
    if value in (".", "..") or value.startswith(LVM_RESERVED_LV_NAMES):
        raise ValidationError(
            f"{value!r} is reserved by LVM: names may not start with "
            f"{' or '.join(LVM_RESERVED_LV_NAMES)}.",
            code="reserved",
        )
    if any(part in value for part in LVM_RESERVED_LV_PARTS):
        raise ValidationError(
            f"{value!r} contains a suffix LVM reserves for itself.", code="reserved"
        )


def validate_fence_agent(value: str) -> None:
    _check(
        FENCE_AGENT_RE,
        value,
        "fence agent",
        "name a fence agent such as fence_ipmilan (fence_ followed by letters, digits, '_')",
    )


def validate_mount_point(value: str) -> None:
    _check(
        MOUNT_POINT_RE,
        value,
        "mount point",
        "give an absolute path such as /mnt/vms, without spaces",
    )
    if any(part in (".", "..") for part in value.split("/")):
        raise ValidationError(
            f"{value!r} is not a valid mount point: no '.' or '..' parts.", code="invalid"
        )


def validate_device_path(value: str) -> None:
    _check(DEVICE_PATH_RE, value, "device path", "give a path under /dev such as /dev/sdb")
    if "/../" in value + "/" or "/./" in value + "/":
        raise ValidationError(f"{value!r} is not a valid device path.", code="invalid")
