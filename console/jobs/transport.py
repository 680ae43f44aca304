"""How commands leave the console: Celery ``send_task`` to the host's queue ``agent.<host>``.

Tests swap the transport with ``use_transport`` (a recorder or a real broker), they don't patch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from django.conf import settings

from agent.protocol import EXECUTE_TASK, agent_queue


class Transport(Protocol):
    def send(self, host: str, command: dict[str, Any], redacted: dict[str, Any]) -> None:
        """Send ``command`` to ``host``'s agent; ``redacted`` (no secrets) is what gets logged."""


class CeleryTransport:
    def send(self, host: str, command: dict[str, Any], redacted: dict[str, Any]) -> None:
        from console.celery import app

        app.send_task(
            EXECUTE_TASK,
            args=[command],
            queue=agent_queue(host),
            argsrepr=repr([redacted]),
            expires=settings.HAVEN_COMMAND_TTL_S,  # never run late (console/settings.py)
        )


class RecordingTransport:
    """Keeps what would have been sent, in order (for tests and dry runs)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, host: str, command: dict[str, Any], redacted: dict[str, Any]) -> None:
        self.sent.append((host, command))


_transport: Transport = CeleryTransport()


def transport() -> Transport:
    return _transport


@contextmanager
def use_transport(t: Transport) -> Iterator[Transport]:
    global _transport
    previous, _transport = _transport, t
    try:
        yield t
    finally:
        _transport = previous
