#!/usr/bin/env python3
"""Keep one console process running: restart it whenever it exits, with a backoff.

    deploy/supervise.py --name worker --log var/log/worker.log -- .venv/bin/celery -A console worker

deploy/quickstart runs every console process under it (the Celery worker, beat, the ingest
drainer, the console's own agent, the web server, the demo's Redis), so that one crash never
stops the console. In production systemd does the same (deploy/systemd/, `Restart=always`).

The program runs in a process group of its own with its output appended to `--log`. When it
exits, for whatever reason, one line says so (on stderr and in its log) and it starts again
after a delay: `--min-delay` (0.1 s, as systemd's default RestartSec), doubled after every run
shorter than `--steady` seconds up to `--max-delay`, back to the minimum after a steady run.
SIGTERM or SIGINT stops the program (SIGTERM to its group, SIGKILL after `--grace` seconds)
and then the supervisor; nothing is restarted then.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO


class Supervisor:
    def __init__(
        self,
        name: str,
        argv: list[str],
        log: Path | None,
        min_delay_s: float = 0.1,
        max_delay_s: float = 10.0,
        steady_s: float = 30.0,
        grace_s: float = 10.0,
    ) -> None:
        self.name, self.argv, self.log = name, argv, log
        self.min_delay_s, self.max_delay_s = min_delay_s, max_delay_s
        self.steady_s, self.grace_s = steady_s, grace_s
        self.restarts = 0
        self._stopping = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None

    def say(self, text: str, out: IO[bytes] | None = None) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} supervise: {self.name}: {text}\n"
        sys.stderr.write(line)
        sys.stderr.flush()
        if out is not None:
            with contextlib.suppress(OSError):
                out.write(line.encode())
                out.flush()

    def _open_log(self) -> IO[bytes] | None:
        if self.log is None:
            return None
        self.log.parent.mkdir(parents=True, exist_ok=True)
        return open(self.log, "ab")

    def run(self) -> int:
        delay = self.min_delay_s
        while not self._stopping.is_set():
            out = self._open_log()
            started = time.monotonic()
            try:
                self._proc = subprocess.Popen(
                    self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            except OSError as exc:
                self.say(f"cannot start {self.argv[0]}: {exc}", out)
                code: int | str = "not started"
            else:
                code = self._proc.wait()
            ran = time.monotonic() - started
            if self._stopping.is_set():
                if out is not None:
                    out.close()
                break
            delay = self.min_delay_s if ran >= self.steady_s else delay
            self.restarts += 1
            how = (
                f"killed by {signal.Signals(-code).name}"
                if isinstance(code, int) and code < 0
                else f"exited with {code}"
            )
            self.say(f"{how} after {ran:.1f} s; restart {self.restarts} in {delay:.1f} s", out)
            if out is not None:
                out.close()
            if self._stopping.wait(delay):
                break
            delay = min(self.max_delay_s, delay * 2)
        return 0

    def stop(self) -> None:
        """Stop the program and do not restart it (from a signal handler or another thread)."""
        self._stopping.set()
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        threading.Thread(target=self._terminate, args=(proc,), daemon=True).start()

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(self.grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="what the log lines call the program")
    parser.add_argument("--log", type=Path, help="append the program's output to this file")
    parser.add_argument("--min-delay", type=float, default=0.1, metavar="S")
    parser.add_argument("--max-delay", type=float, default=10.0, metavar="S")
    parser.add_argument("--steady", type=float, default=30.0, metavar="S")
    parser.add_argument("--grace", type=float, default=10.0, metavar="S")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no program given (after --)")
    sup = Supervisor(
        args.name, command, args.log, args.min_delay, args.max_delay, args.steady, args.grace
    )

    def on_signal(_signum: int, _frame: object) -> None:
        sup.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return sup.run()


if __name__ == "__main__":
    sys.exit(main())
