"""What both labs (the namespace lab, haven_lab.py, and the storage lab, storage/vmlab.py)
share; standard library only.

A process is remembered by pid *and* kernel start time (``ProcRef``), so a recycled pid is never
killed; ``wait_for`` polls with a deadline and raises the lab's own error naming what it waited
for; ``chassis`` is the BMC's chassis-control program (ipmi_sim) over a host's power.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcRef:
    """A process a lab started, identified by pid and kernel start time."""

    pid: int
    start: str

    @classmethod
    def of(cls, pid: int) -> ProcRef | None:
        start = start_time(pid)
        return None if start is None else cls(pid, start)

    def alive(self) -> bool:
        return start_time(self.pid) == self.start

    def dead(self) -> bool:
        return not self.alive()

    def kill(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def start_time(pid: int) -> str | None:
    """Start time of a live (non-zombie) process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def load_ref(path: Path) -> ProcRef | None:
    try:
        data = json.loads(path.read_text())
        return ProcRef(int(data["pid"]), str(data["start"]))
    except (OSError, ValueError, KeyError):
        return None


def save_ref(path: Path, ref: ProcRef) -> None:
    path.write_text(json.dumps({"pid": ref.pid, "start": ref.start}))


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float,
    error: type[Exception] = RuntimeError,
) -> None:
    """Poll predicate until true; ``error`` naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def chassis(
    op: str,
    args: Sequence[str],
    *,
    powered_on: Callable[[], bool],
    power_on: Callable[[], object],
    power_off: Callable[[], object],
    error: type[Exception] = RuntimeError,
) -> str:
    """ipmi_sim's chassis_control program: ``get power ...`` / ``set power 0|1 ...``."""
    if op == "get":
        out = []
        for parm in args:
            if parm == "power":
                out.append(f"power:{1 if powered_on() else 0}")
            elif parm == "boot":
                out.append("boot:default")
            else:
                raise error(f"Invalid parameter: {parm}")
        return "\n".join(out)
    if op == "set":
        if len(args) % 2:
            raise error(f"No value present for parameter {args[-1]}")
        for parm, value in zip(args[::2], args[1::2], strict=True):
            if parm == "power":
                if value == "1":
                    power_on()
                else:
                    power_off()
            elif parm == "reset" and value == "1":
                power_off()
                power_on()
            elif parm not in ("boot", "identify", "reset"):
                raise error(f"Invalid parameter: {parm}")
        return ""
    raise error(f"Unknown operation: {op}")
