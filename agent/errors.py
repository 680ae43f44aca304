"""The one exception type the agent's drivers raise; it becomes a failed Result."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # agent.protocol imports agent.names, which imports this module
    from agent.protocol import ErrorInfo


class AgentError(Exception):
    """A clean, expected failure: `code` is one of protocol.ERROR_CODES."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        command: Sequence[str] | None = None,
        stderr: str | None = None,
        exit_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.command = list(command) if command is not None else None
        self.stderr = stderr
        self.exit_code = exit_code

    def info(self) -> ErrorInfo:
        from agent.protocol import ErrorInfo

        return ErrorInfo(self.code, self.message, self.command, self.stderr, self.exit_code)
