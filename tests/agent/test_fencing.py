"""Fencing through real fence agents: fence_dummy and a lab agent built on fencing.py."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO, Harness

SECRET = "Sup3r-s3cret-pw"


@pytest.fixture
def dummy_status(tmp_path: Path) -> Path:
    if shutil.which("fence_dummy") is None:
        pytest.skip("fence-agents is not installed (fence_dummy)")
    status = tmp_path / "dummy.status"
    status.write_text("on")  # fence_dummy wants no trailing newline
    return status


@pytest.fixture
def host_process(tmp_path: Path) -> Iterator[Path]:
    """A process standing in for a lab host; its pid file is the fence agent's plug."""
    proc = subprocess.Popen(["sleep", "60"])
    pid_file = tmp_path / "host.pid"
    pid_file.write_text(str(proc.pid))
    yield pid_file
    proc.kill()
    proc.wait()


def test_fence_dummy_status_off_status(harness: Harness, dummy_status: Path) -> None:
    params = {"status_file": str(dummy_status)}
    on = harness.run("fence", agent="fence_dummy", action="status", params=params)
    assert on.ok and on.data["outcome"] == "ok" and on.data["power"] == "on"
    off = harness.run("fence", agent="fence_dummy", action="off", params=params)
    assert off.ok and off.data["exit_code"] == 0
    assert dummy_status.read_text() == "off"
    status = harness.run("fence", agent="fence_dummy", action="status", params=params)
    assert status.ok
    assert (status.data["outcome"], status.data["exit_code"], status.data["power"]) == (
        "off",
        2,
        "off",
    )


def test_a_status_query_can_require_power_off(harness: Harness, dummy_status: Path) -> None:
    """The console's question after a fence whose result was lost: "is it off?"."""
    params = {"status_file": str(dummy_status)}
    asked = {"agent": "fence_dummy", "action": "status", "params": params}
    on = harness.run("fence", **asked, require_power="off")
    assert not on.ok and "the host is on, not off" in on.error.message
    harness.run("fence", agent="fence_dummy", action="off", params=params)
    off = harness.run("fence", **asked, require_power="off")
    assert off.ok and off.data["power"] == "off"
    bad = harness.run(
        "fence", agent="fence_dummy", action="off", params=params, require_power="off"
    )
    assert not bad.ok and "require_power" in bad.error.message


def test_lab_agent_powers_a_host_off(harness: Harness, host_process: Path) -> None:
    params = {"pid_file": str(host_process), "password": SECRET}
    assert (
        harness.run("fence", agent="fence_haventest", action="status", params=params).data["power"]
        == "on"
    )
    off = harness.run("fence", agent="fence_haventest", action="off", params=params)
    assert off.ok, off.error
    status = harness.run("fence", agent="fence_haventest", action="status", params=params)
    assert status.data["power"] == "off"


def test_fence_failure_is_a_failed_result(harness: Harness, tmp_path: Path) -> None:
    params = {"pid_file": str(tmp_path / "missing.pid")}
    result = harness.run("fence", agent="fence_haventest", action="off", params=params)
    assert not result.ok and result.error is not None
    assert result.error.code == "command_failed"
    assert result.error.exit_code == 1


def test_fence_timeout(harness: Harness, host_process: Path) -> None:
    params = {"pid_file": str(host_process), "delay": "5"}
    result = harness.run(
        "fence", agent="fence_haventest", action="status", params=params, timeout_s=0.5
    )
    assert result.error is not None and result.error.code == "timeout"
    assert result.duration_s < 3


def test_secrets_never_in_logs_or_results(
    harness: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    params = {"pid_file": str(tmp_path / "missing.pid"), "password": SECRET, "verbose": "1"}
    harness.submit(
        {
            "v": 2,
            "id": "f1",
            "kind": "fence",
            "args": {"agent": "fence_haventest", "action": "off", "params": params},
        }
    )
    (result,) = harness.wait_results(1)
    assert not result.ok
    assert SECRET not in repr(result.to_dict())
    assert SECRET not in caplog.text
    assert "f1" in caplog.text  # the command was logged, its arguments were not


def test_metadata_is_a_parameter_list(harness: Harness, dummy_status: Path) -> None:
    meta = harness.run("fence_metadata", agent="fence_dummy")
    assert meta.ok, meta.error
    params = {p["name"]: p for p in meta.data["parameters"]}
    assert params["action"]["required"] is True
    assert params["status_file"]["default"] == "/tmp/fence_dummy.status"
    assert "off" in meta.data["actions"] and "status" in meta.data["actions"]
    lab = harness.run("fence_metadata", agent="fence_haventest").data
    assert {p["name"]: p for p in lab["parameters"]}["pid_file"]["required"] is True


def test_metadata_of_fence_ipmilan_marks_secrets(harness: Harness) -> None:
    if shutil.which("fence_ipmilan") is None:
        pytest.skip("fence_ipmilan is not installed")
    meta = harness.run("fence_metadata", agent="fence_ipmilan").data
    params = {p["name"]: p for p in meta["parameters"]}
    assert params["password"]["secret"] is True
    assert params["ip"]["secret"] is False


def test_the_lab_fence_agent_speaks_the_protocol(harness: Harness, tmp_path: Path) -> None:
    lab_agent = REPO / "deploy" / "lab" / "fence_haven_lab"
    if not lab_agent.exists():
        pytest.skip("deploy/lab/fence_haven_lab is not in this checkout")
    harness.dispatcher.fencing._search_path.insert(0, lab_agent.parent)  # type: ignore[attr-defined]
    meta = harness.run("fence_metadata", agent="fence_haven_lab")
    assert meta.ok, meta.error
    assert "plug" in {p["name"] for p in meta.data["parameters"]}
    result = harness.run(
        "fence",
        agent="fence_haven_lab",
        action="status",
        params={"plug": "no-such-host", "lab_root": str(tmp_path)},
        timeout_s=20,
    )
    assert not result.ok and result.error is not None and result.error.exit_code == 1
