"""Validators for every name that may reach a command line (lvcreate, virsh, ssh, mount).

The rules are the agent's own (agent/names.py, the one grammar shared by console and agent):
the console refuses, when something is saved, exactly what an agent would refuse when it is
needed. The messages say what is allowed, in plain words.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

from agent import names

# Names that never reach a command line (fence devices, failover domains): safe in URLs and logs.
OBJECT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Host names the console keeps for itself (its own agent's queue is agent.<name>).
RESERVED_HOST_NAMES = frozenset({"haven-console", "localhost"})


def _delegate(check: Callable[[Any], str], value: Any) -> None:
    """Run the agent's check; its refusal becomes a ValidationError in plain words."""
    try:
        check(value)
    except names.InvalidName as exc:
        raise ValidationError(
            f"{exc.value!r} is not a valid {exc.what}: {exc.rule}.", code="invalid"
        ) from exc


def validate_cluster_name(value: str) -> None:
    _delegate(names.cluster, value)


def validate_fs_name(value: str) -> None:
    _delegate(names.fs_name, value)


def reserved_host_names() -> frozenset[str]:
    return RESERVED_HOST_NAMES | {str(getattr(settings, "HAVEN_CONSOLE_AGENT", "haven-console"))}


def validate_hostname(value: str) -> None:
    _delegate(names.host_name, value)
    if value.lower() in reserved_host_names():
        raise ValidationError(
            f"{value!r} is reserved for the console's own agent: give the host another name.",
            code="reserved",
        )


def validate_address(value: str) -> None:
    """A host name or an IPv4/IPv6 address (no scope id), as SSH and libvirt URIs accept them."""
    _delegate(names.address, value)


def validate_url_path(value: str) -> None:
    """The path (and query) of an HTTP probe: starts with '/', URL characters only."""
    _delegate(names.url_path, value)


def validate_libvirt_uri(value: str) -> None:
    _delegate(names.libvirt_uri, value)


def validate_guest_name(value: str) -> None:
    _delegate(names.guest, value)


def validate_object_name(value: str) -> None:
    if not isinstance(value, str) or not OBJECT_NAME_RE.fullmatch(value):
        raise ValidationError(
            f"{value!r} is not a valid name: use up to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit.",
            code="invalid",
        )


def validate_vg_name(value: str) -> None:
    _delegate(names.vg, value)


def validate_lv_name(value: str) -> None:
    _delegate(names.lv, value)


def validate_fence_agent(value: str) -> None:
    _delegate(names.fence_agent, value)


def validate_fence_parameter(value: str) -> None:
    _delegate(names.fence_parameter, value)


def validate_mount_point(value: str) -> None:
    _delegate(names.mount_point, value)


def validate_device_path(value: str) -> None:
    _delegate(names.device, value)


def fence_value_error(key: str, value: Any) -> str:
    """Why a fence parameter's value cannot be stored ('' = it can); never repeats the value."""
    try:
        names.fence_value(key, value)
    except names.InvalidName as exc:
        return f"The value of {key!r} must be {exc.rule}."
    return ""
