"""Haven wire protocol between the console and the agents (version 2).

This is the only module of `agent` the console imports. It depends on the standard library only.

Transport: Redis. Who sent a message is what the transport says, never what the body says:
each agent has a Redis user of its own (created by the console, console/ha/broker.py)
that can write exactly one inbound key and consume exactly one command queue.

Console -> agent
    Celery task ``haven.agent.execute`` (``EXECUTE_TASK``) with one positional argument, a
    ``Command`` dict, sent to queue ``agent.<host>`` (``agent_queue(host)``)::

        {"v": 2, "id": "c-42", "kind": "start", "args": {"guest": "web1"}}

    ``id`` is chosen by the console, unique per command (1-128 chars of ``A-Za-z0-9_.:-``).
    Both sides hold a command to the same rules, ``Command.check``: the console before it sends
    one (console/jobs/services.py ``command_for``, the one place a step becomes a command), the
    agent when it takes one (``Command.from_dict``). Each kind's ``args`` have a typed class
    here (``StartArgs``, ``FenceArgs``, ...; ``ARGS`` maps kind -> class) with one decode
    (``decode_args``: types, ranges and every name through agent/names.py, unexpected fields
    refused) and one encode (``CommandArgs.to_dict``: every field, an optional one not given
    left out; the same names and types as ever, so agents and consoles of either age agree):
    the console builds the args it sends from them (``StepSpec.of``, ``Command.of``), the
    agent's handlers receive them decoded.
    Commands are idempotent by id: the agent remembers recent results, and a repeated id returns
    the first result again (``duplicate: true``) without acting twice. Command messages expire
    (Celery ``expires``) a little after the action's own timeout. Secret arguments (names in
    ``agent.names.SECRET_PARAMETERS``) never travel in clear: the console moves them into
    ``args["sealed"]``, a Fernet token made with the host's own sealing key (delivered by the
    bootstrap), which the agent opens and merges back into ``args`` (``params`` for a fence)
    before anything runs; a token for another host or older than its TTL is refused.
    The agent's worker runs only ``haven.agent.execute`` and refuses (logs, acks, drops) any
    message carrying callbacks, errbacks, a chain, a chord or a group.

Agent -> console
    The agent RPUSHes each message as one JSON object onto its own Redis list
    ``haven:in:<host>`` (``inbound_key(host)``); its Redis user may write that key and no other.
    The console's ingest drainer (``manage.py haven_ingest``) attributes every message to the
    host named by the key; a body whose ``host`` differs is refused. Every message carries
    ``v`` (protocol version), ``host``, ``kind`` (``result`` | ``event`` | ``heartbeat``),
    ``ts`` (Unix time of the observation, float) and ``sent_at`` (the agent's wall clock when it
    was pushed, set by the publisher; the console measures its ingest lag from it).
    Use ``message_from_dict`` to decode one.

    result      the outcome of one command: ``id`` (the command's id), ``command`` (its kind),
                ``ok``, ``data`` (kind-specific dict), ``error`` (``{"code", "message",
                "command", "stderr", "exit_code"}`` or null), ``duration_s``, ``duplicate``.
                A command that cannot be parsed still gets a result (``id`` as sent, or "").
                The console accepts it only from the host the command was sent to.
    event       sent at once, never behind commands: ``event`` = ``lifecycle``, ``guest``,
                ``uuid``, ``state`` (one of ``LIFECYCLE_STATES``), ``detail`` (libvirt's reason,
                e.g. ``failed`` for a killed QEMU, ``destroyed``, ``migrated``), ``seq``; or
                ``event`` = ``health``: the guest failed one of its health checks (``state`` is
                the check, one of ``HEALTH_CHECKS``; ``detail`` the agent's words), sent once
                per failure, and reported in every heartbeat until the guest starts again; or
                ``event`` = ``shutdown`` (guest, uuid, state empty): the host's shutdown hook
                (agent/shutdown.py) asks the console to drain it before it goes down.
    heartbeat   every second by default: ``agent_version``, ``boot`` (random id of this agent
                process), ``seq`` (1, 2, ... within ``boot``), ``interval_s``,
                ``libvirt_connected``, ``host_uuid`` (from libvirt capabilities), ``cpus``,
                ``memory_total_mib``, ``memory_free_mib``, and ``guests``: the active guests as
                ``{"name", "uuid", "state"}``; ``guests`` is null when libvirt is unreachable
                (unknown, which is not the same as "none running"); ``cluster`` (optional,
                null where corosync is not installed): ``running``, ``quorate``, ``node_id``,
                ``nodes`` (members: ``{"nodeid", "votes", "name"}``), ``nodes_count``,
                ``expected_votes``, ``total_votes``, ``quorum``, or ``error`` (the tool's words);
                ``unhealthy`` (optional, default ``{}``): guest -> ``{"check", "detail"}`` for
                guests that failed a health check (running and hung, or gone, and this says
                why) since they last started; ``shared_mounts`` (optional, null when not read):
                the mount points of the GFS2 file systems mounted on the host.

Health checks (per guest, opt-in): the console writes them into the domain XML as
``<metadata><haven:health xmlns:haven="urn:haven:health:1" .../></metadata>`` (``HealthSpec``),
so they travel with the guest when it migrates; the agent of the host running it reads them.
``watchdog="1"``: libvirt's watchdog event (set the device's action to ``none``, Haven's
recovery policy acts); ``panic="1"``: the guest-panicked event (pvpanic); ``agent_interval``,
``agent_misses``: qemu-guest-agent ``guest-ping`` every N s, failed after M misses in a row;
``probe`` (``tcp`` | ``http``), ``probe_host``, ``probe_port``, ``probe_path``,
``probe_interval``, ``probe_misses``: a TCP connect or an HTTP GET (status < 400) to the guest's
service address, from the agent of the host running it.

Commands (``kind``: ``args`` -> ``data``); names are validated before anything runs:

    define            xml                                  -> name, uuid, state
    start             guest, resume=false                  -> name, uuid, state, changed,
                                                              resumed
                      (``resume``: resume its managed-save image; without it a saved image is
                      removed first and the guest boots afresh)
    shutdown          guest, timeout_s=60, save=false      -> name, uuid, state, how,
                                                              save_error?
                      (``how``: shutdown | destroyed (after the timeout) | already_off | saved;
                      ``save``: a managed save (virDomainManagedSave) first; when libvirt
                      refuses it, a shutdown, and ``save_error`` says why)
    destroy           guest                                -> name, uuid, state, changed
    undefine          guest                                -> name, changed
    migrate           guest, dest_uri, migrate_uri?, timeout_s?
                      (LIVE|PEER2PEER|PERSIST_DEST|UNDEFINE_SOURCE)
                                                           -> duration_s, downtime_ms,
                                                              dest_uri, name
    list_guests       active_only=false                    -> guests: [{name, uuid, state}]
    dumpxml           guest                                -> name, xml (persistent definition),
                                                              state (e.g. running, shutoff)
    host_facts        (none)                               -> host_uuid, hostname, cpus,
                                                              memory_total_mib, memory_free_mib,
                                                              libvirt_version, hypervisor,
                                                              hypervisor_version
    configure_migration  listen_address, migration_address, port_min=49152, port_max=49215,
                      transport=tcp|tls|ssh, ca_certificate?, certificate? (PEM; tls only,
                      required there: agent/hvconfig.py)   -> files, changed, restart_required
    tls_request       (none): the host's libvirt TLS key (made when missing; it stays on the
                      host)                                -> csr (PEM), key (path), new_key
    storage_probe     (none)                               -> blockdevices, pvs, vgs, lvs
    pvcreate          device                               -> device
    vgcreate          vg, devices, local=false, extent_size_bytes?
                                                           -> vg, shared, extent_size_bytes
    lvcreate          vg, lv, size_bytes, activate=true    -> vg, lv, size_bytes
    lvextend          vg, lv, size_bytes                   -> vg, lv, size_bytes
    lvremove          vg, lv   (refused "in_use" while mounted here) -> vg, lv
    mkfs_gfs2         device, cluster, fs, journals=2      -> device, lock_table, journals
    gfs2_inspect      device                               -> lock_protocol, lock_table,
                                                              journals, journal_names
    gfs2_jadd         mount_point, journals=1              -> mount_point, journals
    fstab_entry       device, mount_point, fstype, options="defaults", present=true,
                      activate_shared=false (a shared VG's LV: a unit activates it at boot,
                      the mount requires it)           -> line, changed, unit
    mount             device, mount_point, fstype, options?-> mount_point
    unmount           mount_point                          -> mount_point
    vg_lockstart      vg                                   -> vg, lock_started
    lv_activate       vg, lv, mode=shared|exclusive|off    -> vg, lv, activation
    lv_refresh        vg, lv                               -> vg, lv, size_bytes
    lv_usage          vg, lv, refuse_mounted=false         -> vg, lv, mounted
    gfs2_grow         mount_point                          -> mount_point, size_bytes,
                                                              size_bytes_before
    dlm_fence_ack     node (corosync node name)            -> node, nodeid, dlm_state (waits for
                      dlm here to lose the node first)
    corosync_remove_node  node (a host removed from the cluster)
                                                           -> node, changed, nodes (corosync.conf
                                                              without it, corosync-cfgtool -R)
    corosync_add_node  node, address, nodeid (a host joining the cluster)
                                                           -> node, nodeid, changed, nodes
                                                              (corosync.conf with it, -R)
    fence             agent, action, params={}, timeout_s=60
                                                           -> outcome (ok | off | error),
                                                              exit_code, power, output
    fence_metadata    agent                                -> name, shortdesc, actions,
                                                              parameters: [{name, type,
                                                              required, default, description,
                                                              choices, secret, deprecated}]

    rotate_credentials  password, seal_secret (both sealed)  -> file, restarting
                      (the agent writes its new Redis password and sealing key into its
                      ``--broker-file``, answers, then restarts itself within a second; an
                      agent started without that file answers ``not_supported``)

Error codes in ``error.code``: see ``ERROR_CODES``.
"""

from __future__ import annotations

import json
import re
import time
import typing
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Annotated, Any, ClassVar, Literal, Self
from xml.sax.saxutils import quoteattr

from agent import names
from agent.errors import AgentError

PROTOCOL_VERSION = 2
EXECUTE_TASK = "haven.agent.execute"
INBOUND_PREFIX = "haven:in:"
SEALED_ARG = "sealed"

#: the commands that change a host's storage (LVM, GFS2, mounts, fstab, dlm): the agent runs
#: them one at a time
STORAGE_COMMANDS = frozenset(
    {
        "pvcreate",
        "vgcreate",
        "lvcreate",
        "lvextend",
        "lvremove",
        "mkfs_gfs2",
        "gfs2_jadd",
        "fstab_entry",
        "mount",
        "unmount",
        "vg_lockstart",
        "lv_activate",
        "lv_refresh",
        "lv_usage",
        "gfs2_grow",
        "dlm_fence_ack",
        "corosync_remove_node",
        "corosync_add_node",
    }
)
LIFECYCLE_STATES = (
    "defined",  # a persistent definition appeared or changed
    "undefined",  # the definition was removed
    "started",  # the guest runs (booted, restored, or arrived by migration)
    "suspended",  # paused
    "resumed",  # unpaused
    "stopped",  # shut off cleanly: shutdown, destroy, saved
    "crashed",  # shut off unexpectedly: QEMU died or the guest crashed
    "panicked",  # the guest OS panicked (pvpanic); QEMU may still run (on_crash preserve)
    "migrated",  # left this host by migration
    "shutdown",  # the guest OS began shutting down
    "pmsuspended",  # suspended by guest power management
    "unknown",  # an event libvirt added after this agent was written
)

HEALTH_CHECKS = ("watchdog", "panic", "guest-agent", "probe")
HEALTH_NS = "urn:haven:health:1"
PROBE_KINDS = ("tcp", "http")


@dataclass(frozen=True)
class HealthSpec:
    """A guest's health checks, as the console writes them into its domain XML's metadata.

    Parsing checks types and ranges only; the agent checks the probe's address, port and path
    with agent/names.py before it probes anything."""

    watchdog: bool = False
    panic: bool = False
    #: qemu-guest-agent guest-ping every this many seconds (0 = off), failed after `misses`
    agent_interval_s: float = 0.0
    agent_misses: int = 3
    #: "" (off), "tcp" or "http"
    probe: str = ""
    probe_host: str = ""
    probe_port: int = 0
    probe_path: str = "/"
    probe_interval_s: float = 5.0
    probe_misses: int = 3

    def enabled(self) -> bool:
        return self.watchdog or self.panic or self.agent_interval_s > 0 or bool(self.probe)

    def to_xml(self) -> str:
        """The `<haven:health>` element (the console puts it into `<metadata>`)."""
        attrs = {
            "watchdog": "1" if self.watchdog else "0",
            "panic": "1" if self.panic else "0",
            "agent_interval": f"{self.agent_interval_s:g}",
            "agent_misses": str(self.agent_misses),
            "probe": self.probe,
            "probe_host": self.probe_host,
            "probe_port": str(self.probe_port),
            "probe_path": self.probe_path,
            "probe_interval": f"{self.probe_interval_s:g}",
            "probe_misses": str(self.probe_misses),
        }
        body = " ".join(f"{k}={quoteattr(v)}" for k, v in attrs.items())
        return f'<haven:health xmlns:haven="{HEALTH_NS}" {body}/>'

    @classmethod
    def from_domain_xml(cls, xml: str) -> HealthSpec | None:
        """The spec in a domain XML document, None if it has none; ProtocolError if bad."""
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as exc:
            raise ProtocolError("bad_request", f"domain XML does not parse: {exc}") from exc
        el = root.find(f"metadata/{{{HEALTH_NS}}}health")
        if el is None:
            return None
        a = el.attrib

        def number(key: str, default: float, lo: float, hi: float) -> float:
            try:
                value = float(a.get(key, default))
            except ValueError:
                value = float("nan")
            if not lo <= value <= hi:
                raise ProtocolError("bad_request", f"health {key}: a number in [{lo:g}, {hi:g}]")
            return value

        probe = a.get("probe", "")
        if probe not in ("", *PROBE_KINDS):
            raise ProtocolError("bad_request", f"health probe: one of {', '.join(PROBE_KINDS)}")
        agent_interval = number("agent_interval", 0, 0, 3600)
        return cls(
            watchdog=a.get("watchdog") == "1",
            panic=a.get("panic") == "1",
            agent_interval_s=agent_interval if agent_interval == 0 else max(agent_interval, 0.1),
            agent_misses=int(number("agent_misses", 3, 1, 100)),
            probe=probe,
            probe_host=a.get("probe_host", ""),
            probe_port=int(number("probe_port", 0, 0, 65535)),
            probe_path=a.get("probe_path", "/"),
            probe_interval_s=number("probe_interval", 5, 0.1, 3600),
            probe_misses=int(number("probe_misses", 3, 1, 100)),
        )


ERROR_CODES = {
    "bad_request": "the command is malformed: missing or wrongly typed field",
    "unsupported_version": "the command's protocol version is not this agent's",
    "unknown_command": "no such command kind",
    "invalid_name": "a name or path failed validation; nothing was run",
    "not_found": "the guest, device, program or fence agent does not exist",
    "libvirt_error": "libvirt refused; message is libvirt's own",
    "libvirt_unavailable": "the agent cannot reach its libvirtd right now",
    "destination_unreachable": "the migration destination did not accept a TCP connection",
    "command_failed": "an external command exited non-zero; see command and stderr",
    "timeout": "the operation did not finish in time and was stopped",
    "clustered_locking_unavailable": "a shared VG needs lvmlockd, which is not running",
    "not_supported": "this host cannot do it (e.g. the kernel lacks gfs2)",
    "not_mounted": "the operation needs a mounted filesystem",
    "in_use": "refused: the volume is mounted (or otherwise in use) on this host",
    "conflict": "refused: the host's configuration says otherwise (e.g. another node has that id)",
    "internal": "a bug in the agent; the traceback is in the agent's log",
}

_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MessageKind = Literal["result", "event", "heartbeat"]


class ProtocolError(ValueError):
    """A message does not follow this protocol; `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def agent_queue(host: str) -> str:
    """The queue one host's agent consumes."""
    return f"agent.{host}"


def inbound_key(host: str) -> str:
    """The Redis list one host's agent pushes its messages onto (the only key it may write)."""
    return f"{INBOUND_PREFIX}{host}"


def broker_keys(host: str) -> dict[str, str]:
    """Every Redis key one agent uses, by role: its inbound list, its command queue (one list:
    the agent consumes without priority lists), kombu's ack-emulation keys (the agent's worker
    names them per host) and its queue's binding sets. Its Redis user may touch these only."""
    queue, base = agent_queue(host), f"haven.agent.{host}"
    return {
        "inbound": inbound_key(host),
        "queue": queue,
        "unacked": f"{base}.unacked",
        "unacked_index": f"{base}.unacked_index",
        "unacked_mutex": f"{base}.unacked_mutex",
        "binding": f"_kombu.binding.{queue}",
        "binding_permanent": f"_kombu.binding_permanent.{queue}",
    }


def host_of_inbound_key(key: str) -> str | None:
    """The host an inbound key belongs to, or None for any other key."""
    if not key.startswith(INBOUND_PREFIX) or len(key) == len(INBOUND_PREFIX):
        return None
    return key[len(INBOUND_PREFIX) :]


def _check_version(version: object) -> None:
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"protocol version {version!r} is not supported (agent speaks {PROTOCOL_VERSION})",
        )


@dataclass(frozen=True)
class Command:
    """One thing the console asks one agent to do."""

    id: str
    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    v: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.v, "id": self.id, "kind": self.kind, "args": dict(self.args)}

    def check(self) -> Command:
        """This command, if it follows the protocol, else ProtocolError saying what does not:
        the agent checks every command it takes (``from_dict``), the console every command it
        builds (console/jobs/services.py ``command_for``), by these same rules."""
        _check_version(self.v)
        if not isinstance(self.id, str) or not _ID_RE.match(self.id):
            raise ProtocolError("bad_request", "field 'id' must be 1-128 chars of A-Za-z0-9_.:-")
        if not isinstance(self.kind, str):
            raise ProtocolError("bad_request", "field 'kind' is missing or not a string")
        if self.kind not in COMMAND_KINDS:
            raise ProtocolError("unknown_command", f"unknown command kind {self.kind!r}")
        if not isinstance(self.args, dict):
            raise ProtocolError("bad_request", "field 'args' must be an object")
        return self

    @classmethod
    def of(cls, id: str, args: CommandArgs) -> Command:
        """The command carrying ``args`` (its kind is theirs), checked."""
        return cls(id=id, kind=args.kind, args=args.to_dict()).check()

    def typed_args(self) -> CommandArgs:
        """This command's args decoded (after unsealing); ProtocolError saying what is wrong."""
        return decode_args(self.kind, self.args)

    @classmethod
    def from_dict(cls, data: object) -> Command:
        """Parse and check a command; raises ProtocolError with a clear message."""
        if not isinstance(data, dict):
            raise ProtocolError("bad_request", f"a command is a JSON object, not {type(data)}")
        # a field of the wrong type (None, a number for the id) is refused by check()
        fields: Any = {k: data.get(k) for k in ("id", "kind", "v")}
        command = cls(**fields, args=data.get("args", {})).check()
        extra = set(data) - {"v", "id", "kind", "args"}
        if extra:
            raise ProtocolError("bad_request", f"unexpected fields: {sorted(extra)}")
        return command


# --- the args of each command kind --------------------------------------------------------
#: the longest timeout a command may ask for
MAX_TIMEOUT_S = 24 * 3600
_PASSWORD_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_FERNET_KEY_RE = re.compile(r"[A-Za-z0-9_-]{43}=")

#: how one field is read from a command's args: (field name, value as sent) -> value
Parse = Callable[[str, object], Any]


def _bad(key: str, what: str) -> ProtocolError:
    return ProtocolError("bad_request", f"field {key!r} must be {what}")


def _text(check: Callable[[object], str] | None = None) -> Parse:
    def parse(key: str, value: object) -> str:
        if not isinstance(value, str):
            raise _bad(key, "a string")
        return check(value) if check is not None else value

    return parse


def _opt_text(key: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _bad(key, "a string")
    return value


def _integer(lo: int = 0, hi: int = 2**63) -> Parse:
    def parse(key: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise _bad(key, f"an integer in [{lo}, {hi}]")
        return value

    return parse


def _number(key: str, value: object) -> float:
    hi = MAX_TIMEOUT_S
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= hi:
        return float(value)
    raise _bad(key, f"a number in (0, {hi}]")


def _opt_number(key: str, value: object) -> float | None:
    return None if value is None else _number(key, value)


def _flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _bad(key, "true or false")
    return value


def _texts(check: Callable[[object], str]) -> Parse:
    def parse(key: str, value: object) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _bad(key, "a list of strings")
        return [check(v) for v in value]

    return parse


def _mapping(key: str, value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _bad(key, "an object")
    return dict(value)


def _credential(pattern: re.Pattern[str]) -> Parse:
    def parse(key: str, value: object) -> str:
        if not isinstance(value, str):
            raise _bad(key, "a string")
        if not pattern.fullmatch(value):
            raise ProtocolError("bad_request", "the new credentials are not well-formed")
        return value

    return parse


# A field of a command's args is annotated with how it is read: ``Annotated[type, parse]``.
GuestName = Annotated[str, _text(names.guest)]
#: a corosync node name: the guest grammar too
NodeName = GuestName
VgName = Annotated[str, _text(names.vg)]
LvName = Annotated[str, _text(names.lv)]
DevicePath = Annotated[str, _text(names.device)]
MountPoint = Annotated[str, _text(names.mount_point)]
FsType = Annotated[str, _text(names.fstype)]
FenceAgent = Annotated[str, _text(names.fence_agent)]
#: a string checked where it is used (e.g. agent/hvconfig.py for addresses)
Text = Annotated[str, _text()]
OptText = Annotated[str | None, _opt_text]
Flag = Annotated[bool, _flag]
Seconds = Annotated[float, _number]
OptSeconds = Annotated[float | None, _opt_number]
#: a size in bytes, at least one
Size = Annotated[int, _integer(1)]
Params = Annotated[dict[str, object], _mapping]

#: per args class, its fields in order: name, how it is read, required
_READERS: dict[type[Any], list[tuple[str, Parse, bool]]] = {}


def _readers(cls: type[Any]) -> list[tuple[str, Parse, bool]]:
    readers = _READERS.get(cls)
    if readers is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        readers = []
        for f in fields(cls):
            if typing.get_origin(hints[f.name]) is not Annotated:
                raise TypeError(f"{cls.__name__}.{f.name}: annotate it with how it is read")
            required = f.default is MISSING and f.default_factory is MISSING
            readers.append((f.name, hints[f.name].__metadata__[0], required))
        _READERS[cls] = readers
    return readers


@dataclass(frozen=True, slots=True)
class CommandArgs:
    """The args of one command kind: ``from_dict`` decodes what was sent (ProtocolError with
    the field's name if it does not follow the protocol), ``to_dict`` encodes for the wire."""

    kind: ClassVar[str]

    @classmethod
    def from_dict(cls, raw: object) -> Self:
        if not isinstance(raw, dict):
            raise ProtocolError("bad_request", "field 'args' must be an object")
        values: dict[str, Any] = {}
        readers = _readers(cls)
        try:
            for name, parse, required in readers:
                if name in raw:
                    values[name] = parse(name, raw[name])
                elif required:
                    raise ProtocolError("bad_request", f"missing field {name!r}")
        except AgentError as exc:  # a name agent/names.py refuses
            raise ProtocolError(exc.code, exc.message) from exc
        extra = set(raw) - {name for name, _, _ in readers}
        if extra:
            raise ProtocolError("bad_request", f"unexpected fields: {sorted(extra)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Every field, but one that is None: an optional field not given is not sent."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = type(value)(value) if isinstance(value, list | dict) else value
        return out


# hypervisor -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DefineArgs(CommandArgs):
    kind = "define"
    xml: Text


@dataclass(frozen=True, slots=True)
class StartArgs(CommandArgs):
    kind = "start"
    guest: GuestName
    resume: Flag = False


@dataclass(frozen=True, slots=True)
class ShutdownArgs(CommandArgs):
    kind = "shutdown"
    guest: GuestName
    timeout_s: Seconds = 60.0
    save: Flag = False


@dataclass(frozen=True, slots=True)
class DestroyArgs(CommandArgs):
    kind = "destroy"
    guest: GuestName


@dataclass(frozen=True, slots=True)
class UndefineArgs(CommandArgs):
    kind = "undefine"
    guest: GuestName


@dataclass(frozen=True, slots=True)
class MigrateArgs(CommandArgs):
    kind = "migrate"
    guest: GuestName
    dest_uri: Annotated[str, _text(names.libvirt_uri)]
    migrate_uri: OptText = None
    timeout_s: OptSeconds = None


@dataclass(frozen=True, slots=True)
class ListGuestsArgs(CommandArgs):
    kind = "list_guests"
    active_only: Flag = False


@dataclass(frozen=True, slots=True)
class DumpxmlArgs(CommandArgs):
    kind = "dumpxml"
    guest: GuestName


@dataclass(frozen=True, slots=True)
class HostFactsArgs(CommandArgs):
    kind = "host_facts"


@dataclass(frozen=True, slots=True)
class ConfigureMigrationArgs(CommandArgs):
    """Addresses, ports and transport are checked by agent/hvconfig.py, which writes them."""

    kind = "configure_migration"
    listen_address: Text
    migration_address: Text
    port_min: Annotated[int, _integer(1, 65535)] = 49152
    port_max: Annotated[int, _integer(1, 65535)] = 49215
    transport: Text = "tcp"
    ca_certificate: Text = ""
    certificate: Text = ""


@dataclass(frozen=True, slots=True)
class TlsRequestArgs(CommandArgs):
    kind = "tls_request"


# storage ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StorageProbeArgs(CommandArgs):
    kind = "storage_probe"


@dataclass(frozen=True, slots=True)
class PvcreateArgs(CommandArgs):
    kind = "pvcreate"
    device: DevicePath


@dataclass(frozen=True, slots=True)
class VgcreateArgs(CommandArgs):
    kind = "vgcreate"
    vg: VgName
    devices: Annotated[list[str], _texts(names.device)]
    local: Flag = False
    #: 0: LVM's default
    extent_size_bytes: Annotated[int, _integer()] = 0


@dataclass(frozen=True, slots=True)
class LvcreateArgs(CommandArgs):
    kind = "lvcreate"
    vg: VgName
    lv: LvName
    size_bytes: Size
    activate: Flag = True


@dataclass(frozen=True, slots=True)
class LvextendArgs(CommandArgs):
    kind = "lvextend"
    vg: VgName
    lv: LvName
    size_bytes: Size


@dataclass(frozen=True, slots=True)
class LvremoveArgs(CommandArgs):
    kind = "lvremove"
    vg: VgName
    lv: LvName


@dataclass(frozen=True, slots=True)
class MkfsGfs2Args(CommandArgs):
    kind = "mkfs_gfs2"
    device: DevicePath
    cluster: Annotated[str, _text(names.cluster)]
    fs: Annotated[str, _text(names.fs_name)]
    journals: Annotated[int, _integer(1, 256)] = 2


@dataclass(frozen=True, slots=True)
class Gfs2InspectArgs(CommandArgs):
    kind = "gfs2_inspect"
    device: DevicePath


@dataclass(frozen=True, slots=True)
class Gfs2JaddArgs(CommandArgs):
    kind = "gfs2_jadd"
    mount_point: MountPoint
    journals: Annotated[int, _integer(1, 256)] = 1


@dataclass(frozen=True, slots=True)
class FstabEntryArgs(CommandArgs):
    kind = "fstab_entry"
    device: DevicePath
    mount_point: MountPoint
    fstype: FsType
    options: Annotated[str, _text(names.mount_options)] = "defaults"
    present: Flag = True
    #: a shared VG's LV: a unit activates it at boot, the mount requires it
    activate_shared: Flag = False


@dataclass(frozen=True, slots=True)
class MountArgs(CommandArgs):
    kind = "mount"
    device: DevicePath
    mount_point: MountPoint
    fstype: FsType
    options: OptText = None


@dataclass(frozen=True, slots=True)
class UnmountArgs(CommandArgs):
    kind = "unmount"
    mount_point: MountPoint


@dataclass(frozen=True, slots=True)
class VgLockstartArgs(CommandArgs):
    kind = "vg_lockstart"
    vg: VgName


@dataclass(frozen=True, slots=True)
class LvActivateArgs(CommandArgs):
    kind = "lv_activate"
    vg: VgName
    lv: LvName
    #: shared | exclusive | off (agent/storage.py checks it)
    mode: Text = "shared"


@dataclass(frozen=True, slots=True)
class LvRefreshArgs(CommandArgs):
    kind = "lv_refresh"
    vg: VgName
    lv: LvName


@dataclass(frozen=True, slots=True)
class LvUsageArgs(CommandArgs):
    kind = "lv_usage"
    vg: VgName
    lv: LvName
    refuse_mounted: Flag = False


@dataclass(frozen=True, slots=True)
class Gfs2GrowArgs(CommandArgs):
    kind = "gfs2_grow"
    mount_point: MountPoint


@dataclass(frozen=True, slots=True)
class DlmFenceAckArgs(CommandArgs):
    kind = "dlm_fence_ack"
    #: the corosync node name of the host that is down
    node: NodeName


@dataclass(frozen=True, slots=True)
class CorosyncRemoveNodeArgs(CommandArgs):
    kind = "corosync_remove_node"
    node: NodeName


@dataclass(frozen=True, slots=True)
class CorosyncAddNodeArgs(CommandArgs):
    kind = "corosync_add_node"
    node: NodeName
    address: Annotated[str, _text(names.ip_address)]
    nodeid: Annotated[int, _integer(1, 2**32 - 1)]


# fencing and credentials ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FenceArgs(CommandArgs):
    """Action and parameters are checked by agent/fencing.py against the agent's metadata."""

    kind = "fence"
    agent: FenceAgent
    action: Text
    params: Params = field(default_factory=dict)
    timeout_s: Seconds = 60.0
    #: a status query after a lost fence result: succeeds only if the host is in this state
    require_power: OptText = None


@dataclass(frozen=True, slots=True)
class FenceMetadataArgs(CommandArgs):
    kind = "fence_metadata"
    agent: FenceAgent


@dataclass(frozen=True, slots=True)
class RotateCredentialsArgs(CommandArgs):
    """Both travel sealed (agent/sealing.py)."""

    kind = "rotate_credentials"
    password: Annotated[str, _credential(_PASSWORD_RE)]
    seal_secret: Annotated[str, _credential(_FERNET_KEY_RE)]


#: kind -> the class of its args
ARGS: dict[str, type[CommandArgs]] = {
    c.kind: c
    for c in (
        DefineArgs,
        StartArgs,
        ShutdownArgs,
        DestroyArgs,
        UndefineArgs,
        MigrateArgs,
        ListGuestsArgs,
        DumpxmlArgs,
        HostFactsArgs,
        ConfigureMigrationArgs,
        TlsRequestArgs,
        StorageProbeArgs,
        PvcreateArgs,
        VgcreateArgs,
        LvcreateArgs,
        LvextendArgs,
        LvremoveArgs,
        MkfsGfs2Args,
        Gfs2InspectArgs,
        Gfs2JaddArgs,
        FstabEntryArgs,
        MountArgs,
        UnmountArgs,
        VgLockstartArgs,
        LvActivateArgs,
        LvRefreshArgs,
        LvUsageArgs,
        Gfs2GrowArgs,
        DlmFenceAckArgs,
        CorosyncRemoveNodeArgs,
        CorosyncAddNodeArgs,
        FenceArgs,
        FenceMetadataArgs,
        RotateCredentialsArgs,
    )
}
COMMAND_KINDS = frozenset(ARGS)
for _cls in ARGS.values():  # a field without its reader fails here, at import
    _readers(_cls)


def decode_args(kind: str, raw: object) -> CommandArgs:
    """The typed args of a command of ``kind``; ProtocolError naming what is wrong."""
    cls = ARGS.get(kind)
    if cls is None:
        raise ProtocolError("unknown_command", f"unknown command kind {kind!r}")
    return cls.from_dict(raw)


@dataclass(frozen=True)
class ErrorInfo:
    """Why a command failed."""

    code: str
    message: str
    command: list[str] | None = None
    stderr: str | None = None
    exit_code: int | None = None


@dataclass(frozen=True)
class Result:
    """The outcome of one command, keyed by the command's id."""

    host: str
    id: str
    command: str
    ok: bool
    data: dict[str, Any] = field(default_factory=dict)
    error: ErrorInfo | None = None
    duration_s: float = 0.0
    duplicate: bool = False
    ts: float = field(default_factory=time.time)
    sent_at: float = 0.0
    v: int = PROTOCOL_VERSION
    kind: Literal["result"] = "result"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        err = data.get("error")
        fields = {k: v for k, v in data.items() if k != "error"}
        return cls(**fields, error=ErrorInfo(**err) if err else None)


@dataclass(frozen=True)
class GuestState:
    """A guest as a heartbeat or list reports it."""

    name: str
    uuid: str
    state: str


@dataclass(frozen=True)
class Event:
    """Something that happened on the host without being asked (or as a side effect)."""

    host: str
    event: str
    guest: str
    uuid: str
    state: str
    detail: str
    seq: int = 0
    ts: float = field(default_factory=time.time)
    sent_at: float = 0.0
    v: int = PROTOCOL_VERSION
    kind: Literal["event"] = "event"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        return cls(**data)


@dataclass(frozen=True)
class Heartbeat:
    """The agent's periodic "I am alive, and this runs here"."""

    host: str
    agent_version: str
    seq: int
    interval_s: float
    libvirt_connected: bool
    host_uuid: str | None
    cpus: int | None
    memory_total_mib: int | None
    memory_free_mib: int | None
    guests: list[GuestState] | None
    boot: str = ""
    # corosync membership and quorum (agent/cluster_stack.py); None where corosync is absent
    cluster: dict[str, Any] | None = None
    # guest -> {"check", "detail"}: failed health checks since the guest last started
    unhealthy: dict[str, dict[str, str]] = field(default_factory=dict)
    # mount points of the GFS2 file systems mounted here (None: not read)
    shared_mounts: list[str] | None = None
    ts: float = field(default_factory=time.time)
    sent_at: float = 0.0
    v: int = PROTOCOL_VERSION
    kind: Literal["heartbeat"] = "heartbeat"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Heartbeat:
        guests = data.get("guests")
        fields = {k: v for k, v in data.items() if k != "guests"}
        parsed = None if guests is None else [GuestState(**g) for g in guests]
        return cls(**fields, guests=parsed)


Message = Result | Event | Heartbeat


def message_from_dict(data: object) -> Message:
    """Decode one agent -> console message; raises ProtocolError."""
    if not isinstance(data, dict):
        raise ProtocolError("bad_request", "a message is a JSON object")
    _check_version(data.get("v"))
    kind = data.get("kind")
    try:
        if kind == "result":
            return Result.from_dict(data)
        if kind == "event":
            return Event.from_dict(data)
        if kind == "heartbeat":
            return Heartbeat.from_dict(data)
    except TypeError as exc:
        raise ProtocolError("bad_request", f"bad {kind} message: {exc}") from exc
    raise ProtocolError("bad_request", f"unknown message kind {kind!r}")


def to_json(message: Message | Command) -> str:
    return json.dumps(message.to_dict(), sort_keys=True)


def from_json(text: str) -> Message:
    return message_from_dict(json.loads(text))
