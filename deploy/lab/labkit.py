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
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


def power_on(
    argv: Sequence[str],
    log: Path,
    env: dict[str, str],
    ref_file: Path,
    gone: str,
    error: type[Exception] = RuntimeError,
    settle_s: float = 0.0,
    cwd: Path | None = None,
) -> tuple[subprocess.Popen[bytes], ProcRef]:
    """Start a lab machine's process (a session of its own, its output appended to ``log``)
    and save the `ProcRef` that finds it again from another process in ``ref_file``
    (returned with the process);
    ``error`` saying ``gone`` (and where the log is) when it is gone at once (after
    ``settle_s``). Both labs power their machines on so."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
    if settle_s:
        time.sleep(settle_s)
    ref = ProcRef.of(proc.pid)
    if ref is None:
        raise error(f"{gone}: see {log}")
    save_ref(ref_file, ref)
    return proc, ref


def write_bmc(
    bdir: Path,
    name: str,
    address: str,
    port: int,
    guid: str,
    chassis_control: str,
    user: str,
    password: str,
) -> None:
    """The configuration of a lab machine's IPMI BMC (OpenIPMI's ``ipmi_sim``) in ``bdir``:
    LAN on ``address:port``, ``user``/``password`` as its admin (the file is the owner's
    alone), power through the ``chassis_control`` program."""
    auths = "none md2 md5 straight"
    conf = (
        f'name "haven-{name}"\n'
        "set_working_mc 0x20\n"
        "  startlan 1\n"
        f"    addr {address} {port}\n"
        "    priv_limit admin\n"
        + "".join(f"    allowed_auths_{who} {auths}\n" for who in
                  ("callback", "user", "operator", "admin"))
        + f"    guid {guid}\n"
        "  endlan\n"
        f'  chassis_control "{chassis_control}"\n'
        f'  user 1 true "" "" user 10 {auths}\n'
        f'  user 2 true "{user}" "{password}" admin 10 {auths}\n'
    )  # fmt: skip
    bdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(bdir / "lan.conf", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(conf)
    (bdir / "emu.cmds").write_text(
        "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\nmc_enable 0x20\n"
    )
    (bdir / "state").mkdir(exist_ok=True)


def start_bmc(
    bdir: Path, env: dict[str, str], gone: str, error: type[Exception], settle_s: float = 0.0
) -> tuple[subprocess.Popen[bytes], ProcRef]:
    """Start the ``ipmi_sim`` that `write_bmc` configured in ``bdir`` (see `power_on`)."""
    argv = ["ipmi_sim", "-c", str(bdir / "lan.conf"), "-f", str(bdir / "emu.cmds"),
            "-s", str(bdir / "state"), "-n"]  # fmt: skip
    log, ref = bdir / "ipmi_sim.log", bdir / "ipmi_sim.json"
    return power_on(argv, log, env, ref, gone, error, settle_s, cwd=bdir)


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float,
    error: type[Exception] = RuntimeError,
) -> Any:
    """Poll predicate until it gives a true value, and return that value; ``error`` naming
    `what` after timeout seconds (the labs, their tests and the chaos run all wait so)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
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
