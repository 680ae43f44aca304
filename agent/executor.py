"""The command executor: a thread pool with per-key ordering and an idempotency cache.

- Commands with the same ordering key (e.g. one guest) run one after another in arrival order;
  commands with different keys run in parallel, so a long migration never delays another guest.
- A command id seen before is not run again: its first result is published again with
  `duplicate=True` (at once if finished, else when the first run finishes).
- Results are handed to `publish`, which must not block (the publisher has its own thread).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from agent.protocol import Command, ErrorInfo, ProtocolError, Result

log = logging.getLogger(__name__)


class Executor:
    def __init__(
        self,
        host: str,
        handle: Callable[[Command], Result],
        publish: Callable[[Result], None],
        ordering_key: Callable[[Command], str | None],
        *,
        workers: int = 4,
        cache_size: int = 10_000,
        unseal: Callable[[Command], Command] | None = None,
    ) -> None:
        self._host = host
        self._unseal = unseal or (lambda cmd: cmd)
        self._handle = handle
        self._publish = publish
        self._key = ordering_key
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cmd")
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._done: OrderedDict[str, Result] = OrderedDict()
        self._cache_size = cache_size
        self._waiting_dups: dict[str, int] = {}  # in-flight id -> duplicates to answer
        self._queues: dict[str, deque[Command]] = {}  # busy key -> commands waiting for it
        self._running = 0

    def submit(self, raw: object) -> None:
        """Accept one raw command from the broker; never raises."""
        try:
            cmd = self._unseal(Command.from_dict(raw))
        except ProtocolError as exc:
            self._publish(self._rejected(raw, exc))
            return
        with self._lock:
            if self._is_duplicate(cmd):
                return
            self._waiting_dups[cmd.id] = 0
            self._running += 1
            key = self._key(cmd)
            if key is not None and key in self._queues:
                self._queues[key].append(cmd)
                return
            if key is not None:
                self._queues[key] = deque()
        self._pool.submit(self._run, cmd, key)

    def _is_duplicate(self, cmd: Command) -> bool:
        if cmd.id in self._done:
            log.info("command %s is a duplicate; answering with its first result", cmd.id)
            self._publish(replace(self._done[cmd.id], duplicate=True))
            return True
        if cmd.id in self._waiting_dups:
            self._waiting_dups[cmd.id] += 1
            return True
        return False

    def _rejected(self, raw: object, exc: ProtocolError) -> Result:
        cid = raw.get("id") if isinstance(raw, dict) else None
        kind = raw.get("kind") if isinstance(raw, dict) else None
        log.info("rejected command %r: %s", cid, exc.message)
        return Result(
            host=self._host,
            id=cid if isinstance(cid, str) else "",
            command=kind if isinstance(kind, str) else "",
            ok=False,
            error=ErrorInfo(exc.code, exc.message),
        )

    def _run(self, cmd: Command, key: str | None) -> None:
        log.info("command %s (%s) starts", cmd.id, cmd.kind)
        result = self._handle(cmd)
        log.info("command %s (%s) ok=%s in %.3f s", cmd.id, cmd.kind, result.ok, result.duration_s)
        self._publish(result)
        with self._lock:
            self._remember(result)
            for _ in range(self._waiting_dups.pop(cmd.id, 0)):
                self._publish(replace(result, duplicate=True))
            nxt = self._next_for(key)
            self._running -= 1
            self._idle.notify_all()
        if nxt is not None:
            self._pool.submit(self._run, nxt, key)

    def _remember(self, result: Result) -> None:
        self._done[result.id] = result
        while len(self._done) > self._cache_size:
            self._done.popitem(last=False)

    def _next_for(self, key: str | None) -> Command | None:
        if key is None:
            return None
        waiting = self._queues[key]
        if waiting:
            return waiting.popleft()
        del self._queues[key]
        return None

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no command runs or waits (for tests and shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._running == 0, timeout_s)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
