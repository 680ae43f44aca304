"""The command runner: argv lists only, timeouts, captured output, errors that say what failed.

Never a shell. Standard input (where fence agents get their credentials) is never logged or put
into an error.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.errors import AgentError

log = logging.getLogger(__name__)
STDERR_TAIL = 4000


@dataclass(frozen=True)
class Completed:
    """A finished external command."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float


def _tail(text: str) -> str:
    return text[-STDERR_TAIL:]


class Runner:
    """Runs argv lists: checks each, and with ``check`` a non-zero exit raises
    AgentError("command_failed"). How a command is spawned is a subclass's ``spawn``: the
    subprocess here, scripted answers in tests; the rules around it are the same for both."""

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float = 60.0,
        input_text: str | None = None,
        check: bool = True,
    ) -> Completed:
        args = list(argv)
        if not args or not all(isinstance(a, str) and "\0" not in a for a in args):
            raise AgentError("bad_request", f"bad argv {args!r}")
        log.debug("run %s", args)
        done = self.spawn(args, timeout_s, input_text)
        if check and done.returncode != 0:
            raise AgentError(
                "command_failed",
                f"{args[0]} exited {done.returncode}: {_tail(done.stderr).strip()}",
                command=args,
                stderr=_tail(done.stderr),
                exit_code=done.returncode,
            )
        return done

    def spawn(self, args: list[str], timeout_s: float, input_text: str | None) -> Completed:
        raise NotImplementedError


class SubprocessRunner(Runner):
    """Runs commands with subprocess; `env` is added to the agent's own environment."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = dict(env or {})

    def spawn(self, args: list[str], timeout_s: float, input_text: str | None) -> Completed:
        start = time.monotonic()
        try:
            proc = subprocess.run(
                args,
                input=input_text if input_text is not None else "",
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env={**os.environ, "LC_ALL": "C", **self._env},
                check=False,
            )
        except FileNotFoundError as exc:
            raise AgentError("not_found", f"program not found: {args[0]}", command=args) from exc
        except subprocess.TimeoutExpired as exc:
            raise AgentError(
                "timeout",
                f"{args[0]} did not finish in {timeout_s:g} s and was killed",
                command=args,
            ) from exc
        return Completed(args, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)
