"""deploy/supervise.py with real processes: a program that dies is started again (with a
backoff, each restart logged), and stopping the supervisor stops the program for good."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUPERVISE = ROOT / "deploy" / "supervise.py"

# writes its pid on a line of its own, then sleeps (or exits with the code given)
PROGRAM = """
import os, sys, time
with open(sys.argv[1], "a") as f:
    f.write(f"{os.getpid()}\\n")
if len(sys.argv) > 2:
    sys.exit(int(sys.argv[2]))
time.sleep(600)
"""


def _supervise(tmp: Path, *program_args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(SUPERVISE),
            "--name",
            "prog",
            "--log",
            str(tmp / "prog.log"),
            "--max-delay",
            "0.4",
            "--",
            sys.executable,
            "-c",
            PROGRAM,
            str(tmp / "pids"),
            *program_args,
        ],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _pids(tmp: Path) -> list[int]:
    path = tmp / "pids"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _wait(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_a_killed_program_is_started_again_and_the_restart_logged(tmp_path: Path) -> None:
    sup = _supervise(tmp_path)
    try:
        _wait(lambda: len(_pids(tmp_path)) == 1)
        first = _pids(tmp_path)[0]
        killed = time.monotonic()
        os.kill(first, signal.SIGKILL)
        _wait(lambda: len(_pids(tmp_path)) == 2)
        assert time.monotonic() - killed < 2.0  # 0.1 s delay + a Python start
        second = _pids(tmp_path)[1]
        assert second != first and _alive(second)
        log = (tmp_path / "prog.log").read_text()
        assert "supervise: prog: killed by SIGKILL after" in log and "restart 1 in 0.1 s" in log
    finally:
        sup.send_signal(signal.SIGTERM)
        _, err = sup.communicate(timeout=15)
    assert sup.returncode == 0
    assert not _alive(second)  # stopping the supervisor stops the program ...
    time.sleep(0.5)
    assert len(_pids(tmp_path)) == 2  # ... and nothing is started again
    assert "killed by SIGKILL" in err


def test_a_crash_loop_backs_off(tmp_path: Path) -> None:
    sup = _supervise(tmp_path, "3")
    try:
        _wait(lambda: len(_pids(tmp_path)) >= 5)
    finally:
        sup.send_signal(signal.SIGTERM)
        _, err = sup.communicate(timeout=15)
    lines = [line for line in err.splitlines() if "exited with 3" in line]
    assert len(lines) >= 4
    delays = [float(line.rsplit(" in ", 1)[1].split()[0]) for line in lines]
    assert delays[:3] == [0.1, 0.2, 0.4] and max(delays) == 0.4  # doubled, capped
