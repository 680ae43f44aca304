"""Fast, non-durable runtime state in Redis: latest heartbeats, lifecycle events, locks, wakes.

Heartbeats arrive every second from every host; writing each to the database would hold it.
They go to Redis instead, and the runner reads them all in one round trip per tick and writes
only what changed to the database, in one batch.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
from django.conf import settings

PREFIX = "haven:"


def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, decode_responses=True)


@dataclass(frozen=True)
class HostReport:
    """The latest word from one host's agent, as the runner needs it."""

    host: str
    received: float  # console clock
    heartbeat: dict[str, Any]
    running: frozenset[str] = field(default_factory=frozenset)


class Store:
    def __init__(self, r: redis.Redis | None = None, prefix: str = PREFIX) -> None:
        self.r = r or client()
        self.p = prefix

    # --- heartbeats and lifecycle events ---------------------------------------------------
    def put_heartbeat(self, host: str, message: dict[str, Any], received: float) -> None:
        self.r.hset(f"{self.p}hb", host, json.dumps({"received": received, "hb": message}))

    def put_lifecycle(self, host: str, guest: str, state: str, received: float) -> None:
        self.r.hset(f"{self.p}ev:{host}", guest, json.dumps({"state": state, "at": received}))

    def reports(self, hosts: list[str]) -> dict[str, HostReport]:
        """Latest heartbeat per host, with lifecycle events newer than it applied on top."""
        if not hosts:
            return {}
        pipe = self.r.pipeline()
        pipe.hmget(f"{self.p}hb", hosts)
        for host in hosts:
            pipe.hgetall(f"{self.p}ev:{host}")
        answers = pipe.execute()
        out: dict[str, HostReport] = {}
        for host, raw, events in zip(hosts, answers[0], answers[1:], strict=True):
            if raw is None:
                continue
            data = json.loads(raw)
            hb, received = data["hb"], float(data["received"])
            guests = hb.get("guests")
            # every active guest (running, paused, ...) has a QEMU process: a copy exists
            running = {g["name"] for g in guests or []}
            for guest, ev_raw in events.items():
                ev = json.loads(ev_raw)
                if ev["at"] <= received:
                    continue  # the heartbeat is newer than the event
                if ev["state"] in ("started", "resumed"):
                    running.add(guest)
                elif ev["state"] in ("stopped", "crashed", "migrated", "undefined"):
                    running.discard(guest)
            out[host] = HostReport(host, received, hb, frozenset(running))
        return out

    def forget_host(self, host: str) -> None:
        self.r.hdel(f"{self.p}hb", host)
        self.r.delete(f"{self.p}ev:{host}")

    # --- one runner at a time, and wakes that are never lost -------------------------------
    @contextmanager
    def lock(self, name: str, ttl_s: float = 30.0) -> Iterator[bool]:
        """Try to take the lock; yields whether it was taken. Released only by its holder."""
        key, token = f"{self.p}lock:{name}", uuid.uuid4().hex
        taken = bool(self.r.set(key, token, nx=True, px=int(ttl_s * 1000)))
        try:
            yield taken
        finally:
            if taken:
                self._release(key, token)

    _RELEASE = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
        "else return 0 end"
    )

    def _release(self, key: str, token: str) -> None:
        self.r.eval(self._RELEASE, 1, key, token)

    def request(self, name: str) -> None:
        """Ask the lock holder to run once more (a wake that came in while it ran)."""
        self.r.set(f"{self.p}again:{name}", "1", px=60_000)

    def take_request(self, name: str) -> bool:
        return bool(self.r.getdel(f"{self.p}again:{name}"))


def now() -> float:
    return time.time()
