"""deploy/quickstart's Ctrl-C stops everything it started: the supervised console processes
(web, workers, beat, ingest drainer, the console's agent) and the Redis it started itself.
Run without the lab demo (HAVEN_DEMO=0), on a Redis port and a web port of its own (free
ports the kernel hands out, never 6379 or an engineer's), as root (deploy/setup may install).
And deploy/test, once done, leaves no process it started either (a Redis of its own port)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _session(sid: int) -> list[str]:
    """The processes of session ``sid`` still alive (pid and command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) != sid or fields[0] == "Z":
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        found.append(f"{entry.name}: {cmd.strip()}")
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="deploy/quickstart runs deploy/setup (root)")
def test_ctrl_c_stops_everything_the_quickstart_started(tmp_path: Path) -> None:
    redis_port, web_port = _free_port(), _free_port()
    assert not _answers(redis_port)
    env = {
        **os.environ,
        "HAVEN_DEMO": "0",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "HAVEN_BIND": f"127.0.0.1:{web_port}",
    }
    log = tmp_path / "quickstart.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(ROOT / "deploy" / "quickstart")],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: what it starts can be found afterwards
        )
    try:
        deadline = time.monotonic() + 240
        while b"Haven is running at" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        assert _answers(redis_port) and _answers(web_port)
        started = _session(proc.pid)
        assert len(started) >= 7, started  # quickstart, supervisors and their programs
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
        assert proc.wait(timeout=60) is not None
        deadline = time.monotonic() + 15
        while (_session(proc.pid) or _answers(redis_port)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _session(proc.pid) == [], "left running after Ctrl-C"
        assert not _answers(redis_port), "the Redis it started is still running"
        assert not _answers(web_port)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for line in _session(proc.pid):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
        subprocess.run(
            ["redis-cli", "-p", str(redis_port), "shutdown", "nosave"],
            check=False,
            capture_output=True,
        )


@pytest.mark.skipif(os.geteuid() != 0, reason="deploy/test runs deploy/setup (root)")
def test_deploy_test_stops_what_it_started(tmp_path: Path) -> None:
    redis_port = _free_port()
    assert not _answers(redis_port)
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
    # every check, and one small test file (with arguments, pytest runs only what they say)
    argv = [str(ROOT / "deploy" / "test"), "-q", "-p", "no:cacheprovider"]
    argv.append("tests/engine/test_engine_imports.py")
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out = proc.communicate(timeout=600)[0].decode(errors="replace")
        assert proc.returncode == 0, out[-3000:]
        assert f"start-services: redis on 127.0.0.1:{redis_port}" in out, out[-3000:]
        assert " passed" in out, out[-3000:]
        assert _session(proc.pid) == [], "left running after deploy/test"
        assert not _answers(redis_port), "the Redis it started is still running"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(
            ["redis-cli", "-p", str(redis_port), "shutdown", "nosave"],
            check=False,
            capture_output=True,
        )
