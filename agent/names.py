"""Validation of every name that reaches a command line or libvirt.

Each check returns the value unchanged or raises AgentError("invalid_name"); nothing is quoted or
escaped, because nothing goes through a shell: a value that is not plainly safe is refused.
"""

from __future__ import annotations

import ipaddress
import re

from agent.errors import AgentError

# LVM: letters, digits and + _ . - ; not starting with '-'; not '.'/'..'; LVM's own limit 127.
_LVM_RE = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")
_GUEST_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$")
_DEVICE_RE = re.compile(r"^/dev/[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*$")
_PATH_RE = re.compile(r"^/([A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*)?$")
_CLUSTER_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")  # gfs2: cluster name <= 32
_FSNAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,30}$")  # gfs2: fs name <= 30
_FSTYPE_RE = re.compile(r"^[a-z0-9_.]{1,32}$")
_OPTIONS_RE = re.compile(r"^[A-Za-z0-9_=,.:+-]{1,256}$")
_FENCE_AGENT_RE = re.compile(r"^fence_[A-Za-z0-9_]{1,64}$")
_FENCE_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_URI_RE = re.compile(
    r"^[a-z0-9+]+://[A-Za-z0-9_.:@\[\]-]*/[A-Za-z0-9_/.-]*(\?[A-Za-z0-9_=&.%/-]*)?$"
)
_RESERVED_LVM = {".", "..", "snapshot", "pvmove"}


def _check(pattern: re.Pattern[str], what: str, value: object) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise AgentError("invalid_name", f"invalid {what}: {value!r}")
    return value


def _no_dotdot(what: str, value: str) -> str:
    if any(part in {".", ".."} for part in value.split("/")):
        raise AgentError("invalid_name", f"invalid {what}: {value!r} ('.' or '..' component)")
    return value


def guest(value: object) -> str:
    return _check(_GUEST_RE, "guest name", value)


def vg(value: object) -> str:
    name = _check(_LVM_RE, "volume group name", value)
    if name in _RESERVED_LVM:
        raise AgentError("invalid_name", f"invalid volume group name: {name!r} (reserved)")
    return name


def lv(value: object) -> str:
    name = _check(_LVM_RE, "logical volume name", value)
    if name in _RESERVED_LVM or name.startswith(("snapshot", "pvmove")):
        raise AgentError("invalid_name", f"invalid logical volume name: {name!r} (reserved)")
    return name


def device(value: object) -> str:
    return _no_dotdot("device path", _check(_DEVICE_RE, "device path", value))


def mount_point(value: object) -> str:
    path = _no_dotdot("mount point", _check(_PATH_RE, "mount point", value))
    if path == "/":
        raise AgentError("invalid_name", "invalid mount point: '/' is never managed")
    return path


def cluster(value: object) -> str:
    return _check(_CLUSTER_RE, "cluster name (1-32 of A-Za-z0-9_-)", value)


def fs_name(value: object) -> str:
    return _check(_FSNAME_RE, "filesystem name (1-30 of A-Za-z0-9_-)", value)


def fstype(value: object) -> str:
    return _check(_FSTYPE_RE, "filesystem type", value)


def mount_options(value: object) -> str:
    return _check(_OPTIONS_RE, "mount options", value)


def fence_agent(value: object) -> str:
    return _check(_FENCE_AGENT_RE, "fence agent name (fence_*)", value)


def fence_key(value: object) -> str:
    return _check(_FENCE_KEY_RE, "fence parameter name", value)


def fence_value(key: str, value: object) -> str:
    if isinstance(value, bool):
        value = "1" if value else "0"
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or any(c in value for c in "\n\r\0"):
        raise AgentError("invalid_name", f"invalid value for fence parameter {key!r}")
    return value


def libvirt_uri(value: object) -> str:
    return _check(_URI_RE, "libvirt URI", value)


def ip_address(value: object, what: str = "address") -> str:
    if not isinstance(value, str):
        raise AgentError("invalid_name", f"invalid {what}: {value!r}")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise AgentError("invalid_name", f"invalid {what}: {value!r}") from exc


# --- secret parameters (one classification for console and agent) ---------------------------
# A fence parameter or command argument whose value is a secret: stored encrypted by the
# console, never shown back or logged, and sent to an agent only sealed with that agent's own
# key (agent/sealing.py). The names fence agents use, plus any name matching _SECRET_NAME_RE.
SECRET_PARAMETERS = frozenset(
    {
        "password",
        "passwd",
        "password_script",
        "passwd_script",
        "hexadecimal_kg",
        "kg",
        "snmp_priv_passwd",
        "snmp_priv_passwd_script",
        "snmp_auth_passwd",
        "community",
        "identity_file",
        "ssh_options",
        "token",
        "secret",
    }
)
_SECRET_NAME_RE = re.compile(r"pass|secret|community|token|(^|_)kg$|priv|identity", re.IGNORECASE)


def is_secret(name: str) -> bool:
    """Whether a parameter of this name holds a secret (``-`` and ``_`` alike)."""
    key = name.replace("-", "_").lower()
    return key in SECRET_PARAMETERS or bool(_SECRET_NAME_RE.search(key))
