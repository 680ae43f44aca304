"""The publisher: one thread that sends results, events and heartbeats to the console.

Each message is RPUSHed as JSON onto this host's own inbound list ``haven:in:<host>``
(agent/protocol.py), stamped with ``sent_at`` (this machine's wall clock) at each attempt.

Commands never send anything themselves; they hand messages here, so a slow command can never
delay an event or a heartbeat. When the broker is away, results and events wait in order in a
bounded buffer (heartbeats: only the newest is kept) and are sent when it is back, with
exponential backoff between attempts and one log line per outage.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import Any, Protocol

from agent.protocol import Event, Heartbeat, Result, inbound_key

log = logging.getLogger(__name__)


class Sender(Protocol):
    def send(self, message: dict[str, Any]) -> None:
        """Deliver one message or raise."""
        ...


class RedisSender:
    """RPUSHes a message onto the host's inbound list, the one key its Redis user may write."""

    def __init__(self, broker_url: str, host: str) -> None:
        import redis  # the agent's requirement; not imported by the protocol tests

        self._key = inbound_key(host)
        self._redis = redis.Redis.from_url(
            broker_url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=0
        )

    def send(self, message: dict[str, Any]) -> None:
        self._redis.rpush(self._key, json.dumps(message, separators=(",", ":")))

    def close(self) -> None:
        self._redis.close()


class Publisher:
    def __init__(
        self,
        sender: Sender,
        *,
        buffer_size: int = 100_000,
        backoff_max_s: float = 2.0,  # heard again within ~2 s of the broker's return
    ) -> None:
        self._sender = sender
        self._cond = threading.Condition()
        self._pending: deque[dict[str, Any]] = deque(maxlen=buffer_size)
        self._heartbeat: dict[str, Any] | None = None
        self._backoff_max_s = backoff_max_s
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="publisher", daemon=True)
        self.sent = 0

    def start(self) -> None:
        self._thread.start()

    def publish(self, message: Result | Event | Heartbeat) -> None:
        """Queue a message; never blocks."""
        data = message.to_dict()
        with self._cond:
            if isinstance(message, Heartbeat):
                self._heartbeat = data
            else:
                self._pending.append(data)
            self._cond.notify()

    def stop(self, flush_timeout_s: float = 2.0) -> None:
        deadline = time.monotonic() + flush_timeout_s
        with self._cond:
            while (self._pending or self._heartbeat) and time.monotonic() < deadline:
                self._cond.wait(0.05)
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=1.0)

    def _next(self) -> dict[str, Any] | None:
        with self._cond:
            while not self._stop and not self._pending and self._heartbeat is None:
                self._cond.wait()
            if self._stop:
                return None
            return self._pending[0] if self._pending else self._heartbeat

    def _sent(self, message: dict[str, Any]) -> None:
        with self._cond:
            if self._pending and self._pending[0] is message:
                self._pending.popleft()
            elif self._heartbeat is message:
                self._heartbeat = None
            self.sent += 1
            self._cond.notify_all()

    def _loop(self) -> None:
        backoff = 0.0
        while (message := self._next()) is not None:
            message["sent_at"] = time.time()
            try:
                self._sender.send(message)
            except Exception as exc:
                backoff = min(max(backoff * 2, 0.2), self._backoff_max_s)
                if backoff <= 0.2:
                    log.warning("cannot reach the console's broker (%s); buffering", exc)
                time.sleep(backoff)
                continue
            if backoff:
                log.info("broker reachable again; sending buffered messages")
                backoff = 0.0
            self._sent(message)
