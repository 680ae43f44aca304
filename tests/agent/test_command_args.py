"""Each command kind's typed args: one decode, one encode, the same wire as before.

The console builds what it sends from these classes (``Command.of``), the agent's handlers get
them decoded; an old console's hand-built dicts and a new console's encoded ones are the same
messages to an agent of either age."""

from __future__ import annotations

import inspect
import json
from dataclasses import MISSING, fields

import pytest

from agent import protocol as p
from agent.commands import Dispatcher
from agent.protocol import ARGS, COMMAND_KINDS, Command, ProtocolError, decode_args

#: one value of every kind's args, every field away from its default
SAMPLES: list[p.CommandArgs] = [
    p.DefineArgs(xml="<domain type='test'><name>web1</name></domain>"),
    p.StartArgs(guest="web1", resume=True),
    p.ShutdownArgs(guest="web1", timeout_s=5.0, save=True),
    p.DestroyArgs(guest="web1"),
    p.UndefineArgs(guest="web1"),
    p.MigrateArgs(
        guest="web1",
        dest_uri="qemu+tls://h2/system",
        migrate_uri="tcp://10.0.0.2:49152",
        timeout_s=300.0,
    ),
    p.ListGuestsArgs(active_only=True),
    p.DumpxmlArgs(guest="web1"),
    p.HostFactsArgs(),
    p.ConfigureMigrationArgs(
        listen_address="10.0.0.1",
        migration_address="10.0.1.1",
        port_min=50000,
        port_max=50063,
        transport="tls",
        ca_certificate="CA PEM",
        certificate="CERT PEM",
    ),
    p.TlsRequestArgs(),
    p.StorageProbeArgs(),
    p.PvcreateArgs(device="/dev/sdb"),
    p.VgcreateArgs(vg="vg0", devices=["/dev/sdb", "/dev/sdc"], local=True, extent_size_bytes=4096),
    p.LvcreateArgs(vg="vg0", lv="lv0", size_bytes=1 << 30, activate=False),
    p.LvextendArgs(vg="vg0", lv="lv0", size_bytes=2 << 30),
    p.LvremoveArgs(vg="vg0", lv="lv0"),
    p.MkfsGfs2Args(device="/dev/vg0/lv0", cluster="alpha", fs="vms", journals=4),
    p.Gfs2InspectArgs(device="/dev/vg0/lv0"),
    p.Gfs2JaddArgs(mount_point="/mnt/vms", journals=2),
    p.FstabEntryArgs(
        device="/dev/vg0/lv0",
        mount_point="/mnt/vms",
        fstype="gfs2",
        options="noatime",
        present=False,
        activate_shared=True,
    ),
    p.MountArgs(device="/dev/vg0/lv0", mount_point="/mnt/vms", fstype="gfs2", options="noatime"),
    p.UnmountArgs(mount_point="/mnt/vms"),
    p.VgLockstartArgs(vg="vg0"),
    p.LvActivateArgs(vg="vg0", lv="lv0", mode="exclusive"),
    p.LvRefreshArgs(vg="vg0", lv="lv0"),
    p.LvUsageArgs(vg="vg0", lv="lv0", refuse_mounted=True),
    p.Gfs2GrowArgs(mount_point="/mnt/vms"),
    p.DlmFenceAckArgs(node="h2"),
    p.CorosyncRemoveNodeArgs(node="h2"),
    p.CorosyncAddNodeArgs(node="h4", address="10.88.0.14", nodeid=4),
    p.FenceArgs(
        agent="fence_ipmilan",
        action="off",
        params={"ip": "10.0.0.9", "lanplus": "1"},
        timeout_s=30.0,
        require_power="off",
    ),
    p.FenceMetadataArgs(agent="fence_ipmilan"),
    p.RotateCredentialsArgs(password="p" * 32, seal_secret="k" * 43 + "="),
]


def test_every_kind_has_a_sample_and_the_console_and_agent_name_the_same_kinds() -> None:
    assert sorted(a.kind for a in SAMPLES) == sorted(COMMAND_KINDS) == sorted(ARGS)
    assert p.STORAGE_COMMANDS <= COMMAND_KINDS


@pytest.mark.parametrize("args", SAMPLES, ids=[a.kind for a in SAMPLES])
def test_each_kind_round_trips_through_the_wire(args: p.CommandArgs) -> None:
    command = Command.of("c-1", args)
    wire = json.loads(json.dumps(command.to_dict()))
    again = Command.from_dict(wire)
    assert again.typed_args() == args
    assert again.args == args.to_dict()
    # every field travels (all are given here); a required one alone decodes with defaults
    assert set(args.to_dict()) == {f.name for f in fields(args)}
    bare = {f.name: getattr(args, f.name) for f in fields(args) if f.name in _required(args)}
    assert type(args).from_dict(bare).to_dict().items() >= bare.items()


def _required(args: p.CommandArgs) -> set[str]:
    return {f.name for f in fields(args) if f.default is f.default_factory is MISSING}


def test_the_dispatcher_hands_each_handler_its_kinds_args_class() -> None:
    for kind, cls in ARGS.items():
        handler = getattr(Dispatcher, f"_do_{kind}")
        annotation = inspect.signature(handler).parameters["a"].annotation
        assert annotation == f"p.{cls.__name__}", kind


@pytest.mark.parametrize(
    ("kind", "old_dict", "typed"),
    [
        # as consoles before typed args wrote them (explicit defaults included)
        ("start", {"guest": "web1"}, p.StartArgs("web1")),
        ("start", {"guest": "web1", "resume": False}, p.StartArgs("web1")),
        ("shutdown", {"guest": "web1", "timeout_s": 60}, p.ShutdownArgs("web1")),
        (
            "lv_activate",
            {"vg": "vg0", "lv": "lv0", "mode": "shared"},
            p.LvActivateArgs("vg0", "lv0"),
        ),
        (
            "fence",
            {"agent": "fence_dummy", "action": "status", "params": {}, "timeout_s": 60.0},
            p.FenceArgs("fence_dummy", "status"),
        ),
        ("migrate", {"guest": "g", "dest_uri": "test:///default", "migrate_uri": None}, None),
    ],
)
def test_an_old_consoles_dict_is_the_same_command(
    kind: str, old_dict: dict[str, object], typed: p.CommandArgs | None
) -> None:
    decoded = decode_args(kind, old_dict)
    if typed is not None:
        assert decoded == typed
    # what a new console sends for it is what an old agent read: the same names and values,
    # the defaults it assumed spelled out, an optional field not given (None) left out
    new = decoded.to_dict()
    assert {k: v for k, v in old_dict.items() if v is not None}.items() <= new.items()
    assert set(new) == {f.name for f in fields(decoded) if getattr(decoded, f.name) is not None}


@pytest.mark.parametrize(
    ("kind", "raw", "code", "message"),
    [
        ("start", {}, "bad_request", "missing field 'guest'"),
        ("start", {"guest": 5}, "bad_request", "field 'guest' must be a string"),
        ("start", {"guest": "g", "force": 1}, "bad_request", "unexpected fields: ['force']"),
        ("start", ["g"], "bad_request", "field 'args' must be an object"),
        ("destroy", {"guest": "$(reboot)"}, "invalid_name", "invalid guest name: '$(reboot)'"),
        ("shutdown", {"guest": "g", "timeout_s": True}, "bad_request", "field 'timeout_s'"),
        ("shutdown", {"guest": "g", "timeout_s": 0}, "bad_request", "a number in (0, 86400]"),
        ("lvcreate", {"vg": "v", "lv": "l", "size_bytes": 0}, "bad_request", "[1, "),
        ("vgcreate", {"vg": "v", "devices": ["/etc/x"]}, "invalid_name", "device path"),
        ("gfs2_jadd", {"mount_point": "/m", "journals": 300}, "bad_request", "[1, 256]"),
        ("fence", {"agent": "fence_x", "action": "off", "params": []}, "bad_request", "object"),
        ("rotate_credentials", {"password": "x", "seal_secret": "y"}, "bad_request", "well-formed"),
        ("reboot", {}, "unknown_command", "unknown command kind 'reboot'"),
    ],
)
def test_bad_args_are_refused_naming_the_field(
    kind: str, raw: object, code: str, message: str
) -> None:
    with pytest.raises(ProtocolError) as refused:
        decode_args(kind, raw)
    assert refused.value.code == code and message in refused.value.message
