"""Bad input gets a clear error result, never a crash, and never runs anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.protocol import PROTOCOL_VERSION

from .conftest import Harness

V = PROTOCOL_VERSION
CASES: list[tuple[str, object, str]] = [
    ("not a dict", ["start", "g"], "bad_request"),
    ("none", None, "bad_request"),
    (
        "wrong protocol version",
        {"v": 99, "id": "b1", "kind": "start", "args": {}},
        "unsupported_version",
    ),
    ("no version", {"id": "b2", "kind": "start", "args": {}}, "unsupported_version"),
    ("missing id", {"v": V, "kind": "start", "args": {"guest": "g"}}, "bad_request"),
    ("bad id", {"v": V, "id": "a b/c", "kind": "start", "args": {}}, "bad_request"),
    ("unknown command", {"v": V, "id": "b3", "kind": "format_c", "args": {}}, "unknown_command"),
    ("kind not a string", {"v": V, "id": "b4", "kind": 5, "args": {}}, "bad_request"),
    ("args not an object", {"v": V, "id": "b5", "kind": "start", "args": "g"}, "bad_request"),
    ("extra top-level field", {"v": V, "id": "b6", "kind": "host_facts", "x": 1}, "bad_request"),
    ("missing field", {"v": V, "id": "b7", "kind": "start", "args": {}}, "bad_request"),
    (
        "unexpected arg",
        {"v": V, "id": "b8", "kind": "start", "args": {"guest": "g", "force": 1}},
        "bad_request",
    ),
    (
        "wrong arg type",
        {
            "v": V,
            "id": "b9",
            "kind": "lvcreate",
            "args": {"vg": "v", "lv": "l", "size_bytes": "1G"},
        },
        "bad_request",
    ),
    (
        "negative timeout",
        {"v": V, "id": "b10", "kind": "shutdown", "args": {"guest": "g", "timeout_s": -1}},
        "bad_request",
    ),
    (
        "shell in LV name",
        {
            "v": V,
            "id": "b11",
            "kind": "lvcreate",
            "args": {"vg": "vg0", "lv": "x; rm -rf /", "size_bytes": 4096},
        },
        "invalid_name",
    ),
    (
        "option as VG name",
        {
            "v": V,
            "id": "b12",
            "kind": "vgcreate",
            "args": {"vg": "--help", "devices": ["/dev/loop7"], "local": True},
        },
        "invalid_name",
    ),
    (
        "device outside /dev",
        {"v": V, "id": "b13", "kind": "pvcreate", "args": {"device": "/etc/passwd"}},
        "invalid_name",
    ),
    (
        "dotdot device",
        {
            "v": V,
            "id": "b14",
            "kind": "mkfs_gfs2",
            "args": {"device": "/dev/../etc/shadow", "cluster": "c", "fs": "f"},
        },
        "invalid_name",
    ),
    (
        "bad guest name",
        {"v": V, "id": "b15", "kind": "destroy", "args": {"guest": "$(reboot)"}},
        "invalid_name",
    ),
    (
        "bad mount point",
        {"v": V, "id": "b16", "kind": "unmount", "args": {"mount_point": "/"}},
        "invalid_name",
    ),
    (
        "missing fence agent",
        {
            "v": V,
            "id": "b17",
            "kind": "fence",
            "args": {"agent": "fence_doesnotexist", "action": "status"},
        },
        "not_found",
    ),
    (
        "fence agent path",
        {"v": V, "id": "b18", "kind": "fence", "args": {"agent": "../../bin/sh", "action": "off"}},
        "invalid_name",
    ),
    (
        "fence param newline",
        {
            "v": V,
            "id": "b19",
            "kind": "fence",
            "args": {
                "agent": "fence_dummy",
                "action": "status",
                "params": {"plug": "1\naction=off"},
            },
        },
        "invalid_name",
    ),
    (
        "bad fence action",
        {
            "v": V,
            "id": "b20",
            "kind": "fence",
            "args": {"agent": "fence_dummy", "action": "explode"},
        },
        "bad_request",
    ),
    (
        "domain XML garbage",
        {"v": V, "id": "b21", "kind": "define", "args": {"xml": "<domain"}},
        "bad_request",
    ),
    (
        "domain XML bad name",
        {
            "v": V,
            "id": "b22",
            "kind": "define",
            "args": {"xml": "<domain type='test'><name>a;b</name></domain>"},
        },
        "invalid_name",
    ),
    (
        "bad migration URI",
        {
            "v": V,
            "id": "b23",
            "kind": "migrate",
            "args": {"guest": "g", "dest_uri": "qemu+tcp://x/system;id"},
        },
        "invalid_name",
    ),
    (
        "bad transport",
        {
            "v": V,
            "id": "b24",
            "kind": "configure_migration",
            "args": {
                "listen_address": "10.0.0.1",
                "migration_address": "10.0.0.1",
                "transport": "rsh",
            },
        },
        "bad_request",
    ),
    (
        "bad address",
        {
            "v": V,
            "id": "b25",
            "kind": "configure_migration",
            "args": {"listen_address": "0.0.0.0; x", "migration_address": "10.0.0.1"},
        },
        "invalid_name",
    ),
    (
        "guest does not exist",
        {"v": V, "id": "b26", "kind": "start", "args": {"guest": "no-such-guest"}},
        "not_found",
    ),
]


@pytest.mark.parametrize(("what", "raw", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clean_error(
    harness: Harness, tmp_path: Path, what: str, raw: object, code: str
) -> None:
    harness.submit(raw)
    (result,) = harness.wait_results(1)
    assert not result.ok, what
    assert result.error is not None
    assert result.error.code == code, result.error
    assert result.error.message
    if isinstance(raw, dict) and isinstance(raw.get("id"), str) and code != "bad_request":
        assert result.id == raw["id"]
    assert harness.run("host_facts").ok  # and the agent still works
    assert not list(tmp_path.glob("*.conf"))  # nothing was written
