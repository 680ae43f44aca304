"""The wire format: JSON round trips and strict parsing of commands."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from agent import protocol
from agent.protocol import (
    Command,
    ErrorInfo,
    Event,
    GuestState,
    Heartbeat,
    ProtocolError,
    Result,
    from_json,
    to_json,
)

from .conftest import REPO


def test_command_round_trip() -> None:
    cmd = Command("c-1", "start", {"guest": "web1"})
    assert Command.from_dict(json.loads(to_json(cmd))) == cmd


@pytest.mark.parametrize(
    "message",
    [
        Result("h1", "c-1", "start", True, {"name": "web1"}),
        Result(
            "h1", "c-2", "pvcreate", False, error=ErrorInfo("command_failed", "x", ["a"], "e", 5)
        ),
        Event("h1", "lifecycle", "web1", "u-1", "crashed", "failed", seq=3),
        Heartbeat(
            "h1", "0.1.0", 7, 1.0, True, "u", 2, 3000, 1000, [GuestState("g", "u", "running")]
        ),
        Heartbeat("h1", "0.1.0", 8, 1.0, False, None, None, None, None, None),
    ],
)
def test_messages_round_trip_through_json(message: protocol.Message) -> None:
    again = from_json(to_json(message))
    assert again == message
    data = message.to_dict()
    assert data["v"] == protocol.PROTOCOL_VERSION
    assert data["host"] == "h1"
    assert data["kind"] in ("result", "event", "heartbeat")
    assert isinstance(data["ts"], float)


def test_wrong_version_is_refused() -> None:
    with pytest.raises(ProtocolError) as err:
        Command.from_dict({"v": 99, "id": "x", "kind": "start", "args": {}})
    assert err.value.code == "unsupported_version"
    with pytest.raises(ProtocolError):
        protocol.message_from_dict({"v": 0, "kind": "event"})


def test_every_documented_command_is_implemented() -> None:
    from agent.commands import Dispatcher
    from agent.fencing import FenceAgents
    from agent.runner import SubprocessRunner
    from agent.storage import LinuxStorage

    runner = SubprocessRunner()
    dispatcher = Dispatcher("h", None, LinuxStorage(runner), FenceAgents(runner))  # type: ignore[arg-type]
    assert dispatcher.kinds() == protocol.COMMAND_KINDS
    for kind in protocol.COMMAND_KINDS:
        assert kind in (protocol.__doc__ or "")


def test_agent_code_imports_no_django_or_console() -> None:
    for path in (REPO / "agent").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            assert not [m for m in mods if m.split(".")[0] in ("django", "console")], path


def test_protocol_is_stdlib_only_and_nothing_loads_the_console() -> None:
    # kombu itself probes for django.utils.functional when Django is installed; that is
    # kombu's optional import, not ours, so only `console` is checked at run time.
    code = (
        "import sys, agent.protocol; assert not set(sys.modules) & {'celery', 'libvirt', 'kombu'}; "
        "import agent.worker, agent.__main__; "
        "assert not [m for m in sys.modules if m.split('.')[0] == 'console']"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
