"""The one grammar of every name that reaches a command line, a config file or libvirt.

The agent checks what it is sent; the console (console/core/validators.py) applies the same
rules when a host, fence device, service, volume group, logical volume, file system or mount
point is saved, so it never accepts what an agent will refuse later.

Each check returns the value unchanged or raises InvalidName (an AgentError "invalid_name");
nothing is quoted or escaped, because nothing goes through a shell: a value that is not plainly
safe is refused. Every pattern must match the whole string (``fullmatch``: a trailing newline
never passes).
"""

from __future__ import annotations

import ipaddress
import re

from agent.errors import AgentError


class InvalidName(AgentError):
    """``value`` is not a valid ``what``; ``rule`` says in plain words what is allowed."""

    def __init__(self, what: str, value: object, rule: str) -> None:
        super().__init__("invalid_name", f"invalid {what}: {value!r} ({rule})")
        self.what, self.value, self.rule = what, value, rule


# LVM's own rule for VG and LV names: letters, digits and + _ . - ; not starting with '-' or
# '.'; LVM's limit is 127.
_LVM_RE = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+-]{0,126}")
LVM_RULE = "use letters, digits, '.', '_', '+' or '-', not starting with '-' or '.'"
_RESERVED_VG = frozenset({".", "..", "snapshot", "pvmove"})
RESERVED_LV_PREFIXES = ("snapshot", "pvmove")
RESERVED_LV_PARTS = (
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
# libvirt allows almost anything in a domain name; Haven allows what is safe everywhere.
_GUEST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
GUEST_RULE = "use up to 64 letters, digits, '.', '_', '+' or '-', starting with a letter or digit"
# RFC 1123 host name: dot-separated labels of letters, digits and hyphens.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")
HOST_RULE = "use letters, digits and '-' in dot-separated labels, with no spaces"
_DEVICE_RE = re.compile(r"/dev(/[A-Za-z0-9_.+:-]+)+")
_PATH_RE = re.compile(r"(/[A-Za-z0-9_.+-]+)+")
# A cluster name is the first half of a GFS2 lock table (``cluster:fs``); Conga kept it to 15.
_CLUSTER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,14}")
CLUSTER_RULE = (
    "use 1 to 15 letters, digits, '-' or '_', starting with a letter or digit "
    "(it becomes part of the GFS2 lock table)"
)
# The GFS2 file-system half of the lock table: at most 30 characters.
_FSNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,29}")
FSNAME_RULE = "use 1 to 30 letters, digits, '-' or '_', starting with a letter or digit"
_FSTYPE_RE = re.compile(r"[a-z0-9_.]{1,32}")
_OPTIONS_RE = re.compile(r"[A-Za-z0-9_=,.:+-]{1,256}")
_FENCE_AGENT_RE = re.compile(r"fence_[a-z0-9_]{1,60}")
FENCE_AGENT_RULE = (
    "name a fence agent such as fence_ipmilan (fence_ followed by letters, digits, '_')"
)
# Fence parameters as the agents' metadata names them: ip, ipport, lanplus, hexadecimal_kg ...
_FENCE_KEY_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
FENCE_KEY_RULE = "use a lower-case parameter name of the agent's metadata, such as ip or lanplus"
#: Parameters a person never sets: Haven chooses the action (``option`` is its old alias);
#: the plug (alias ``port``) has its own field.
RESERVED_FENCE_PARAMETERS = frozenset({"action", "option", "plug", "port"})
MAX_FENCE_VALUE = 1024
# libvirt connections Haven makes: local, over TCP, TLS or SSH, and the test driver; no query
# string (``?command=``, ``?socket=``, ``?keyfile=`` would choose what libvirt runs or reads).
_ADDR = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?"
_URI_RE = re.compile(
    rf"qemu(?:\+unix)?:///system|test:///default"
    rf"|qemu\+(?:tcp|tls)://{_ADDR}/system"
    rf"|qemu\+ssh://(?:[a-z_][a-z0-9_-]{{0,31}}@)?{_ADDR}/system"
)
URI_RULE = (
    "use qemu:///system, qemu+tcp://ADDRESS/system, qemu+tls://ADDRESS/system or "
    "qemu+ssh://USER@ADDRESS/system, without a query string"
)
_MIGRATION_URI_RE = re.compile(rf"tcp://{_ADDR}")
_CONFIG_VALUE_RE = re.compile(r'[0-9]+|"[^"\\\x00-\x1f]*"')


def _check(pattern: re.Pattern[str], what: str, value: object, rule: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidName(what, value, rule)
    return value


def _no_dotdot(what: str, value: str, rule: str) -> str:
    if any(part in {".", ".."} for part in value.split("/")):
        raise InvalidName(what, value, f"{rule}; no '.' or '..' parts")
    return value


def guest(value: object) -> str:
    return _check(_GUEST_RE, "guest name", value, GUEST_RULE)


def vg(value: object) -> str:
    name = _check(_LVM_RE, "volume group name", value, LVM_RULE)
    if name in _RESERVED_VG:
        raise InvalidName("volume group name", name, "it is reserved by LVM")
    return name


def lv(value: object) -> str:
    name = _check(_LVM_RE, "logical volume name", value, LVM_RULE)
    if name.startswith(RESERVED_LV_PREFIXES):
        raise InvalidName(
            "logical volume name",
            name,
            f"it is reserved by LVM (names may not start with {' or '.join(RESERVED_LV_PREFIXES)})",
        )
    if any(part in name for part in RESERVED_LV_PARTS):
        raise InvalidName(
            "logical volume name", name, "it contains a suffix LVM reserves for itself"
        )
    return name


def device(value: object) -> str:
    rule = "give a path under /dev such as /dev/sdb"
    return _no_dotdot("device path", _check(_DEVICE_RE, "device path", value, rule), rule)


def mount_point(value: object) -> str:
    rule = "give an absolute path such as /mnt/vms, without spaces ('/' is never managed)"
    return _no_dotdot("mount point", _check(_PATH_RE, "mount point", value, rule), rule)


def cluster(value: object) -> str:
    return _check(_CLUSTER_RE, "cluster name", value, CLUSTER_RULE)


def fs_name(value: object) -> str:
    return _check(_FSNAME_RE, "file system name", value, FSNAME_RULE)


def fstype(value: object) -> str:
    return _check(_FSTYPE_RE, "filesystem type", value, "a lower-case type such as gfs2")


def mount_options(value: object) -> str:
    return _check(_OPTIONS_RE, "mount options", value, "options such as defaults,noatime")


def host_name(value: object) -> str:
    return _check(_HOST_RE, "host name", value, HOST_RULE)


def fence_agent(value: object) -> str:
    return _check(_FENCE_AGENT_RE, "fence agent", value, FENCE_AGENT_RULE)


def fence_key(value: object) -> str:
    """A key the agent writes to a fence agent's stdin (``plug`` included)."""
    return _check(_FENCE_KEY_RE, "fence parameter name", value, FENCE_KEY_RULE)


def fence_parameter(value: object) -> str:
    """A parameter a person may store for a fence device: a key that is not reserved."""
    key = fence_key(value)
    if key in RESERVED_FENCE_PARAMETERS:
        raise InvalidName(
            "fence parameter name",
            key,
            "Haven sets the action itself, and the plug has its own field",
        )
    return key


def fence_value(key: str, value: object) -> str:
    if isinstance(value, bool):
        value = "1" if value else "0"
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or any(c in value for c in "\n\r\0"):
        raise InvalidName(
            f"value for fence parameter {key!r}", "…", "one line (no line break or NUL)"
        )
    if len(value) > MAX_FENCE_VALUE:
        raise InvalidName(
            f"value for fence parameter {key!r}", "…", f"at most {MAX_FENCE_VALUE} characters"
        )
    return value


def fence_plug(value: object) -> str:
    """The plug/port/VM name a fence device powers: one line, no '='."""
    plug = fence_value("plug", value)
    if "=" in plug or len(plug) > 64:
        raise InvalidName("plug", plug, "at most 64 characters on one line, without '='")
    return plug


def libvirt_uri(value: object) -> str:
    return _check(_URI_RE, "libvirt URI", value, URI_RULE)


def migration_uri(value: object) -> str:
    """Where QEMU's migration stream goes (``tcp://ADDRESS[:PORT]``)."""
    return _check(_MIGRATION_URI_RE, "migration URI", value, "tcp://ADDRESS or tcp://ADDRESS:PORT")


def ip_address(value: object, what: str = "address") -> str:
    """An IPv4 or IPv6 address without a scope id (``%eth0``), in its usual form."""
    rule = "give an IPv4 or IPv6 address (no %scope)"
    if not isinstance(value, str) or "%" in value:
        raise InvalidName(what, value, rule)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise InvalidName(what, value, rule) from exc


def address(value: object) -> str:
    """What SSH and libvirt URIs reach a host by: an IP address or a host name."""
    try:
        ip_address(value, "host address")
    except InvalidName:
        try:
            host_name(value)
        except InvalidName as exc:
            raise InvalidName("host address", value, "give an IP address or a host name") from exc
    assert isinstance(value, str)
    return value


_URL_PATH_RE = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,255}")


def port(value: object, what: str = "port") -> int:
    """A TCP port, 1-65535."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidName(what, value, "give a TCP port from 1 to 65535")
    return value


def url_path(value: object) -> str:
    """The path (and query) of an HTTP GET: starts with '/', printable URL characters only
    (no spaces, no '#'), at most 256 characters."""
    return _check(
        _URL_PATH_RE, "URL path", value, "start with '/', use URL characters, no spaces or '#'"
    )


def config_value(value: str) -> str:
    """A value written into a libvirt config file: a number or a quoted string without quotes,
    backslashes or control characters (a newline would start a setting of its own)."""
    if not isinstance(value, str) or not _CONFIG_VALUE_RE.fullmatch(value):
        raise InvalidName("config value", value, 'a number or "text" on one line, without quotes')
    return value


# --- secret fence parameters: one classification for console and agent ---------------------
#: Fence parameters that are secrets: the console stores them encrypted and never shows them.
SECRET_PARAMETERS: frozenset[str] = frozenset(
    {
        "password",
        "passwd",
        "password_script",
        "passwd_script",
        "hexadecimal_kg",
        "kg",
        "snmp_priv_passwd",
        "snmp_priv_passwd_script",
        "community",
        "identity_file",
    }
)
_SECRET_RE = re.compile(r"pass|secret|community|token|(^|_)kg$")


def is_secret(name: str) -> bool:
    """Whether a fence parameter of this name is a secret (listed, or named like one)."""
    return name in SECRET_PARAMETERS or bool(_SECRET_RE.search(name))
