"""Name validation and the command runner."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent import names
from agent.errors import AgentError
from agent.runner import SubprocessRunner


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (names.lv, "x; rm -rf /"),
        (names.lv, "-n"),
        (names.lv, "snapshot1"),
        (names.vg, ".."),
        (names.vg, "a b"),
        (names.guest, "g$(reboot)"),
        (names.guest, ""),
        (names.device, "/dev/../etc/passwd"),
        (names.device, "/etc/passwd"),
        (names.mount_point, "/"),
        (names.mount_point, "relative/path"),
        (names.mount_point, "/mnt/a b"),
        (names.cluster, "c" * 33),
        (names.fence_agent, "/bin/sh"),
        (names.fence_agent, "fence_x;id"),
        (names.mount_options, "rw;reboot"),
        (names.libvirt_uri, "qemu+tcp://host/system; rm"),
    ],
)
def test_bad_names_are_refused(check: object, value: str) -> None:
    with pytest.raises(AgentError) as err:
        check(value)  # type: ignore[operator]
    assert err.value.code == "invalid_name"


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (names.lv, "lv_data-1"),
        (names.vg, "vg.cluster+1"),
        (names.guest, "web-01.example"),
        (names.device, "/dev/mapper/vg-lv"),
        (names.mount_point, "/mnt/gfs2/data"),
        (names.libvirt_uri, "qemu+tcp://10.88.0.2/system"),
        (names.libvirt_uri, "test:///default"),
    ],
)
def test_good_names_pass(check: object, value: str) -> None:
    assert check(value) == value  # type: ignore[operator]


def test_runner_captures_output() -> None:
    done = SubprocessRunner().run(["sh", "-c", "echo out; echo err >&2"])
    assert (done.returncode, done.stdout, done.stderr) == (0, "out\n", "err\n")


def test_runner_never_uses_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    done = SubprocessRunner().run(["echo", f"x; touch {marker}"])
    assert done.stdout == f"x; touch {marker}\n"
    assert not marker.exists()


def test_runner_error_carries_command_and_stderr() -> None:
    with pytest.raises(AgentError) as err:
        SubprocessRunner().run(["sh", "-c", "echo broken >&2; exit 3"])
    assert err.value.code == "command_failed"
    assert err.value.command == ["sh", "-c", "echo broken >&2; exit 3"]
    assert err.value.stderr == "broken\n"
    assert err.value.exit_code == 3


def test_runner_timeout_kills() -> None:
    start = time.monotonic()
    with pytest.raises(AgentError) as err:
        SubprocessRunner().run(["sleep", "10"], timeout_s=0.3)
    assert err.value.code == "timeout"
    assert time.monotonic() - start < 3


def test_runner_missing_program() -> None:
    with pytest.raises(AgentError) as err:
        SubprocessRunner().run(["/nonexistent/prog"])
    assert err.value.code == "not_found"


def test_runner_stdin_is_not_in_errors() -> None:
    with pytest.raises(AgentError) as err:
        SubprocessRunner().run(
            ["sh", "-c", "cat >/dev/null; exit 1"], input_text="password=s3cr3t\n"
        )
    assert "s3cr3t" not in repr(vars(err.value))
