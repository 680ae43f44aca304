"""Fast, non-durable runtime state in Redis: latest heartbeats, lifecycle events, locks, wakes.

Heartbeats arrive every second from every host; writing each to the database would hold it.
They go to Redis instead, and the runner reads them all in one round trip per tick and writes
only what changed to the database, in one batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
from django.conf import settings

from agent.protocol import agent_queue

log = logging.getLogger("haven.store")
PREFIX = "haven:"
#: The runner's lock lives this long unless renewed: how long a dead holder stalls HA.
LOCK_TTL_S = 3.0
#: A holder stuck longer than this (a hung tick) stops renewing and lets another runner in.
LOCK_MAX_HOLD_S = 60.0
# The drainer blocks at most this long on empty inbound lists before it reports again.
DRAIN_WAIT_S = 1.0


def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, decode_responses=True)


@dataclass(frozen=True)
class HostReport:
    """The latest word from one host's agent, as the runner needs it."""

    host: str
    received: float  # console clock
    heartbeat: dict[str, Any]
    running: frozenset[str] = field(default_factory=frozenset)
    #: guest -> (check, detail): failed health checks (the heartbeat's, and newer events)
    unhealthy: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestStatus:
    """How far behind the console's view of the hosts is.

    ``lag_s`` is the larger of two measures: the drainer's own, on the console's clock (with
    messages waiting, the time since it last had taken everything; with none, the time since
    it last reported, beyond its idle wait ``DRAIN_WAIT_S``, so a dead drainer shows as a lag
    growing by a second per second), and ``heartbeat_lag_s``, the median over hosts of
    receive time - the agent's ``sent_at`` of its newest heartbeat (this one trusts the hosts'
    clocks: keep them in sync). ``backlog``: messages waiting in the inbound lists at the last
    report; ``reported_at``: that report's time, None before the drainer ever ran (then the lag
    is 0.0: there is no view to be behind)."""

    lag_s: float
    backlog: int
    heartbeat_lag_s: float
    reported_at: float | None


class Store:
    def __init__(self, r: redis.Redis | None = None, prefix: str = PREFIX) -> None:
        self.r = r or client()
        self.p = prefix
        self._first_look: float | None = None  # the first view_since() of this process

    # --- heartbeats and lifecycle events ---------------------------------------------------
    def put_heartbeat(self, host: str, message: dict[str, Any], received: float) -> None:
        self.put_batch({host: message}, [], received)

    def put_lifecycle(self, host: str, guest: str, state: str, received: float) -> None:
        self.put_batch({}, [(host, guest, state)], received)

    def put_batch(
        self,
        heartbeats: dict[str, dict[str, Any]],
        lifecycle: list[tuple[str, str, str]],
        received: float,
        health: Sequence[tuple[str, str, str, str]] = (),
    ) -> None:
        """The newest heartbeat per host, lifecycle events (host, guest, state) and health
        events (host, guest, check, detail), in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        if heartbeats:
            pipe.hset(
                f"{self.p}hb",
                mapping={
                    host: json.dumps({"received": received, "hb": hb})
                    for host, hb in heartbeats.items()
                },
            )
        for host, guest, state in lifecycle:
            pipe.hset(f"{self.p}ev:{host}", guest, json.dumps({"state": state, "at": received}))
        for host, guest, check, detail in health:
            pipe.hset(
                f"{self.p}hl:{host}",
                guest,
                json.dumps({"check": check, "detail": detail, "at": received}),
            )
        pipe.execute()

    def reports(self, hosts: list[str]) -> dict[str, HostReport]:
        """Latest heartbeat per host, with lifecycle events newer than it applied on top."""
        if not hosts:
            return {}
        pipe = self.r.pipeline()
        pipe.hmget(f"{self.p}hb", hosts)
        for host in hosts:
            pipe.hgetall(f"{self.p}ev:{host}")
            pipe.hgetall(f"{self.p}hl:{host}")
        answers = pipe.execute()
        out: dict[str, HostReport] = {}
        pairs = zip(answers[1::2], answers[2::2], strict=True)
        for host, raw, (events, health) in zip(hosts, answers[0], pairs, strict=True):
            if raw is None:
                continue
            data = json.loads(raw)
            hb, received = data["hb"], float(data["received"])
            guests = hb.get("guests")
            # every active guest (running, paused, ...) has a QEMU process: a copy exists
            running = {g["name"] for g in guests or []}
            started: dict[str, float] = {}
            for guest, ev_raw in events.items():
                ev = json.loads(ev_raw)
                if ev["state"] == "started":
                    started[guest] = ev["at"]
                if ev["at"] <= received:
                    continue  # the heartbeat is newer than the event
                if ev["state"] in ("started", "resumed"):
                    running.add(guest)
                elif ev["state"] in ("stopped", "crashed", "migrated", "undefined"):
                    running.discard(guest)
            unhealthy = _unhealthy(hb.get("unhealthy"))
            for guest, hl_raw in health.items():
                hl = json.loads(hl_raw)
                # newer than the heartbeat, and than the guest's last start (a fresh run)
                if hl["at"] > received and hl["at"] >= started.get(guest, 0.0):
                    unhealthy[guest] = (str(hl["check"]), str(hl["detail"]))
            for guest, at in started.items():  # a start after the heartbeat: a fresh run
                if at > received:
                    unhealthy.pop(guest, None)
            out[host] = HostReport(host, received, hb, frozenset(running), unhealthy)
        return out

    def forget_host(self, host: str) -> None:
        self.r.hdel(f"{self.p}hb", host)
        self.r.delete(f"{self.p}ev:{host}")
        self.r.delete(f"{self.p}hl:{host}")

    # --- how far behind the console's view is -----------------------------------------------
    def record_ingest(self, at: float, caught_up_at: float, backlog: int) -> None:
        """The drainer's progress: when it last wrote, when it last had taken everything the
        agents had pushed (console clock), and how many messages still wait."""
        self.r.hset(
            f"{self.p}ingest",
            mapping={"at": at, "caught_up_at": caught_up_at, "backlog": backlog},
        )

    def ingest_status(self, now: float | None = None) -> IngestStatus:
        """See ``IngestStatus``; one round trip."""
        now = time.time() if now is None else now
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(f"{self.p}ingest")
        pipe.hvals(f"{self.p}hb")
        progress, heartbeats = pipe.execute()
        lags = []
        for raw in heartbeats:
            data = json.loads(raw)
            sent = data["hb"].get("sent_at")
            if isinstance(sent, int | float) and sent > 0:
                lags.append(float(data["received"]) - sent)
        hb_lag = statistics.median(lags) if lags else 0.0
        if not progress:
            return IngestStatus(0.0, 0, max(0.0, hb_lag), None)
        at, caught_up = float(progress["at"]), float(progress["caught_up_at"])
        backlog = int(progress["backlog"])
        behind = now - caught_up if backlog else now - at - DRAIN_WAIT_S
        return IngestStatus(max(0.0, behind, hb_lag), backlog, max(0.0, hb_lag), at)

    def ingest_lag(self, now: float | None = None) -> float:
        """Seconds by which the console's view of the hosts may be behind (0.0 when keeping up):
        see ``IngestStatus.lag_s``."""
        return self.ingest_status(now).lag_s

    # --- one runner at a time, and wakes that are never lost -------------------------------
    @contextmanager
    def lock(
        self, name: str, ttl_s: float = LOCK_TTL_S, max_hold_s: float = LOCK_MAX_HOLD_S
    ) -> Iterator[Lease]:
        """Try to take the lock; yields a `Lease`, true if it was taken. Released only by its
        holder. The lock lives `ttl_s` and is renewed in the background while the holder works,
        so a holder that dies (or hangs, process and all) blocks others for at most `ttl_s`."""
        key, token, sent = f"{self.p}lock:{name}", uuid.uuid4().hex, time.monotonic()
        taken = bool(self.r.set(key, token, nx=True, px=int(ttl_s * 1000)))
        lease = Lease(self.r, key, token, ttl_s, max_hold_s, taken, sent)
        try:
            yield lease
        finally:
            lease.release()

    def lock_left_s(self, name: str) -> float | None:
        """Seconds the lock still lives (0.0: free; None: no expiry, never set by `lock`)."""
        answer: Any = self.r.pttl(f"{self.p}lock:{name}")
        left = int(answer)
        return 0.0 if left == -2 else None if left < 0 else left / 1000

    def request(self, name: str) -> None:
        """Ask the lock holder to run once more (a wake that came in while it ran)."""
        self.r.set(f"{self.p}again:{name}", "1", px=60_000)

    def take_request(self, name: str) -> bool:
        return bool(self.r.getdel(f"{self.p}again:{name}"))

    def drop_commands(self, host: str) -> None:
        """Throw away the commands still queued for a host being fenced: sent before the fence,
        they must never run after it (the host reboots and its agent comes back fast). Commands
        its agent had already taken but not acknowledged come back only after the agents'
        visibility timeout, long expired (HAVEN_COMMAND_TTL_S)."""
        self.r.delete(agent_queue(host))

    # --- is the view of heartbeats continuous? ----------------------------------------------
    _VIEW = (
        "local v = redis.call('get', KEYS[1]) "
        "if v then local sep = string.find(v, ' ', 1, true) "
        "if sep and string.sub(v, 1, sep - 1) == ARGV[1] then return string.sub(v, sep + 1) end "
        "end "
        "redis.call('set', KEYS[1], ARGV[1] .. ' ' .. ARGV[2]) return ARGV[2]"
    )

    def view_since(self, now: float) -> float:
        """Console-clock time since which this store's heartbeats have been kept without a
        break: since this Store (one per runner process) first looked, and since Redis last
        started or lost its data. A marker ``view`` holds the server's run_id and the time it
        was first seen; a restart (new run_id, even with AOF) or an emptied or replaced Redis
        (no marker) starts the view afresh at `now`."""
        info: Any = self.r.info("server")
        run_id = str(info["run_id"])
        answer: Any = self.r.eval(self._VIEW, 1, f"{self.p}view", run_id, repr(now))
        since = float(answer)
        if self._first_look is None:
            self._first_look = now
        return max(since, self._first_look)


def now() -> float:
    return time.time()


def _unhealthy(raw: object) -> dict[str, tuple[str, str]]:
    """A heartbeat's ``unhealthy`` (guest -> {check, detail}); anything malformed is dropped."""
    out: dict[str, tuple[str, str]] = {}
    if isinstance(raw, dict):
        for guest, v in raw.items():
            if isinstance(guest, str) and isinstance(v, dict) and isinstance(v.get("check"), str):
                out[guest] = (v["check"], str(v.get("detail", "")))
    return out


class LockLost(RuntimeError):
    """The holder's lock expired or was taken over: what it was about to commit is void."""


class Lease:
    """A runner lock while it is held: renewed every third of its ttl by a thread of its own,
    by compare-and-pexpire (only while the key still holds this holder's token).

    A renewal that finds another token, or that cannot reach Redis before the lock would have
    expired, marks the lease lost for good. `check()` renews once more and raises `LockLost`
    if the lease is lost: the runner calls it as the last thing before its transaction commits,
    so a tick that lost its lock rolls back instead of writing beside the new holder's."""

    _RENEW = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then "
        "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
    )
    _RELEASE = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
        "else return 0 end"
    )

    def __init__(
        self,
        r: redis.Redis,
        key: str,
        token: str,
        ttl_s: float,
        max_hold_s: float,
        taken: bool,
        started: float,
    ) -> None:
        """`started`: time.monotonic() when the SET that took the lock was sent."""
        self.r, self.key, self.token, self.ttl_s = r, key, token, ttl_s
        self.taken = taken
        self._deadline = started + max_hold_s
        self._valid_until = started + ttl_s  # monotonic: the key expires no earlier
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None
        if taken:
            self._thread = threading.Thread(target=self._renew_loop, name=f"lease {key}")
            self._thread.daemon = True
            self._thread.start()

    def __bool__(self) -> bool:
        return self.taken

    @property
    def held(self) -> bool:
        return self.taken and not self._lost.is_set()

    def _renew_once(self, strict: bool = False) -> bool:
        """One compare-and-pexpire; False once the lease is lost (and, when `strict`, if Redis
        did not answer: the caller is about to commit and wants a fresh ttl, not a hope)."""
        with self._mutex:
            if self._lost.is_set():
                return False
            sent = time.monotonic()
            if sent > self._deadline:
                log.warning("%s held longer than its limit: no longer renewed", self.key)
                self._lost.set()
                return False
            try:
                ok = self.r.eval(self._RENEW, 1, self.key, self.token, str(int(self.ttl_s * 1000)))
            except redis.RedisError as exc:
                if strict or time.monotonic() >= self._valid_until:
                    log.warning("%s lost: Redis unreachable while renewing (%s)", self.key, exc)
                    self._lost.set()
                    return False
                return True  # try again until the lock would have expired
            if not ok:
                log.warning("%s lost: expired or taken over", self.key)
                self._lost.set()
                return False
            self._valid_until = sent + self.ttl_s
            return True

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            if not self._renew_once():
                return

    def check(self) -> None:
        """Renew now; raise `LockLost` unless this holder still holds the lock."""
        if not self.taken or not self._renew_once(strict=True):
            raise LockLost(f"{self.key} is no longer held by this runner")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.taken:
            with contextlib.suppress(redis.RedisError):
                self.r.eval(self._RELEASE, 1, self.key, self.token)
            self._lost.set()
