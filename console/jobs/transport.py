"""How commands leave the console: Celery ``send_task`` to the host's queue ``agent.<host>``.

Every command expires (Celery ``expires``): an agent that takes it later than the console waits
for its outcome drops it unrun (a start the engine gave up on must never happen late). Secret
arguments are sealed before they get here (jobs.services, agent/sealing.py).

Tests swap the transport with ``use_transport`` (a recorder or a real broker), they don't patch.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from django.conf import settings

from agent.protocol import EXECUTE_TASK, agent_queue
from console.core import broker
from console.core.ports import Port

log = logging.getLogger("haven.jobs")

# How long the console waits for an action (the engine's action_timeout_s), and for a fence.
COMMAND_EXPIRES_S = 300.0
FENCE_EXPIRES_S = 60.0
#: A command that cannot be sent because Redis is away or restarting is tried again for about
#: 8 s (kombu's publish retry: after 0.2 s, then 0.3 s longer each time, at most 1 s apart), so
#: a Redis restart does not leave its step waiting out the action timeout (a start not sent
#: was a guest down for 300 s in the chaos runs). A retry after an ambiguous failure may send
#: a command twice: an agent runs a command id once (agent/executor.py).
SEND_RETRY: dict[str, float] = {
    "max_retries": 10,
    "interval_start": 0.2,
    "interval_step": 0.3,
    "interval_max": 1.0,
}
NO_RETRY: dict[str, float] = {
    "max_retries": 0,
    "interval_start": 0,
    "interval_step": 0,
    "interval_max": 0,
}


def expires_s(command: dict[str, Any]) -> float:
    """Seconds after which an untaken command is dropped: its own timeout for a fence, else
    the time the console waits for any action."""
    timeout = (command.get("args") or {}).get("timeout_s")
    if command.get("kind") == "fence":
        return (
            float(timeout) if isinstance(timeout, int | float) and timeout > 0 else FENCE_EXPIRES_S
        )
    return COMMAND_EXPIRES_S


class Transport(Protocol):
    def send(self, host: str, command: dict[str, Any], redacted: dict[str, Any]) -> None:
        """Send ``command`` to ``host``'s agent; ``redacted`` (no secrets) is what gets logged."""


class CeleryTransport:
    def send(self, host: str, command: dict[str, Any], redacted: dict[str, Any]) -> None:
        self._publish(host, command, redacted, None)

    def send_many(self, sends: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> None:
        """Several commands through one producer (one broker connection taken from the pool,
        not one each), handed to Redis in one round trip (kombu's publish batch: one pipeline
        of LPUSHes; 80 starts one by one were 80 round trips, ~340 ms on a loaded machine).
        When that round trip fails (Redis away or restarting), each is sent again on its own
        with the send retry: a command that cannot be sent is logged, the others still go (one
        may arrive twice: an agent runs a command id once)."""
        from console.celery import app

        retry = SEND_RETRY
        try:
            pool: Any = app.producer_or_acquire()  # a context manager (celery's stubs: no)
            with pool as producer:
                if len(sends) > 1 and producer.supports_batch_publish:
                    try:
                        with producer.batch():
                            for host, command, redacted in sends:
                                self._publish(host, command, redacted, producer, NO_RETRY)
                        return
                    except Exception as exc:  # delivery uncertain: each again, retried
                        log.debug("the batch of %d commands failed (%s)", len(sends), exc)
                for host, command, redacted in sends:
                    try:
                        self._publish(host, command, redacted, producer, retry)
                    except Exception as exc:  # the step stays dispatched and times out
                        what = f"could not send {command.get('kind')} to {host}"
                        broker.log_failure(log, what, exc)
                        if broker.unavailable(exc):
                            retry = NO_RETRY  # waited once already: the rest are not held
        except Exception as exc:  # no connection to the broker at all
            broker.log_failure(log, f"could not send {len(sends)} command(s)", exc)

    def _publish(
        self,
        host: str,
        command: dict[str, Any],
        redacted: dict[str, Any],
        producer: Any,
        retry: dict[str, float] | None = None,
    ) -> None:
        from console.celery import app

        app.send_task(
            EXECUTE_TASK,
            args=[command],
            queue=agent_queue(host),
            argsrepr=repr([redacted]),
            # never run late: a command not taken by then is dropped (console/settings.py)
            expires=min(expires_s(command), settings.HAVEN_COMMAND_TTL_S),
            producer=producer,
            retry=True,
            retry_policy=SEND_RETRY if retry is None else retry,
        )


class RecordingTransport:
    """Keeps what would have been sent, in order (for tests and dry runs)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, host: str, command: dict[str, Any], redacted: dict[str, Any]) -> None:
        self.sent.append((host, command))


_transport: Port[Transport] = Port(CeleryTransport())
transport = _transport.get
#: send jobs' commands with ``t`` instead (tests: ``RecordingTransport``, ``FakeAgents``)
use_transport = _transport.use
