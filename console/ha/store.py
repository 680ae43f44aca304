"""Fast, non-durable runtime state: latest heartbeats, lifecycle events, locks, wakes.

Heartbeats arrive every second from every host; writing each to the database would hold it.
They go to the store instead, and the runner reads them all in one round trip per tick and
writes only what changed to the database, in one batch.

``Store`` is the port (a Protocol): what the ingest, the runner, the snapshot, the rulebook and
the pages need of it. Two implementations ship:

- ``RedisStore``: production, on the console's Redis (one round trip per call);
- ``MemoryStore``: in one process, on a clock it is given (the scenarios' virtual time, the
  UI simulator); it can also play the faults a Redis suffers (``restart``: data lost).

Both read time only from the ``clock`` they were made with (``store.clock()``): the runtime
asks the store for "now" when nobody passed a time, so a whole console runs on virtual time
by giving it a ``MemoryStore(clock=...)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
from django.conf import settings

from agent.protocol import GuestState, Heartbeat, agent_queue

log = logging.getLogger("haven.store")
PREFIX = "haven:"
#: The runner's lock lives this long unless renewed: how long a dead holder stalls HA.
LOCK_TTL_S = 3.0
#: A holder stuck longer than this (a hung tick) stops renewing and lets another runner in.
LOCK_MAX_HOLD_S = 60.0
# The drainer blocks at most this long on empty inbound lists before it reports again.
DRAIN_WAIT_S = 1.0
#: a page's kept answer outlives a console that stopped refreshing it by this much at most
PANEL_KEPT_S = 3600
#: a host's events share one hash (one read a host a tick): field "life:<guest>" holds the
#: guest's newest lifecycle event, "health:<guest>" its newest failed health check
LIFE, HEALTH = "life", "health"


def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, decode_responses=True)


def _count(value: object) -> int | None:
    """A whole number >= 0 from the wire, else None (unknown: a bad value is not believed)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return int(value)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _paths(value: object) -> list[str] | None:
    """A list of paths from the wire, else None (unknown)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return list(value)


def _time(value: object) -> float:
    """A time from the wire (seconds), else 0.0."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def sent_at(data: dict[str, Any]) -> float:
    """A stored heartbeat's ``sent_at`` (0.0 when missing): all the lag needs, read without
    decoding the rest (its guests are thousands of entries at size)."""
    return _time(data.get("sent_at"))


class _KeptGuests:
    """Each host's last guest list decoded, reused while its heartbeats report the same list
    (compared as parsed: equal lists decode alike). A host's guests rarely change from one
    second to the next, and decoding all of them every tick was a third of the runner's CPU
    at 128 hosts x 80 guests. Per process, for every store; one entry a host name."""

    MAX_HOSTS = 4096

    def __init__(self) -> None:
        self._kept: dict[str, tuple[list[Any], list[GuestState], frozenset[str]]] = {}

    def decode(self, host: str, raw: list[Any]) -> tuple[list[GuestState], frozenset[str]]:
        kept = self._kept.get(host)
        if kept is not None and kept[0] == raw:
            return kept[1], kept[2]
        guests = [
            GuestState(str(g["name"]), str(g.get("uuid") or ""), str(g.get("state") or ""))
            for g in raw
        ]
        names = frozenset(g.name for g in guests)
        if len(self._kept) >= self.MAX_HOSTS:
            self._kept.clear()
        self._kept[host] = (raw, guests, names)
        return guests, names


_kept_guests = _KeptGuests()


def decode_heartbeat(host: str, data: dict[str, Any]) -> Heartbeat:
    """A stored heartbeat as ``agent.protocol.Heartbeat``: the one place the console reads a
    heartbeat's fields. A missing or malformed value (a negative memory, a count that is not a
    number) is None, never a guess; ``host`` is the sender, whatever the body says."""
    return _decode(host, data)[0]


def _decode(host: str, data: dict[str, Any]) -> tuple[Heartbeat, frozenset[str]]:
    """`decode_heartbeat`, and the names of the guests it reports."""
    raw = data.get("guests")
    guests, names = (None, frozenset[str]()) if raw is None else _kept_guests.decode(host, raw)
    cluster = data.get("cluster")
    beat = Heartbeat(
        host=host,
        agent_version=_text(data.get("agent_version")) or "",
        seq=_count(data.get("seq")) or 0,
        interval_s=float(_count(data.get("interval_s")) or 0),
        libvirt_connected=raw is not None,
        host_uuid=_text(data.get("host_uuid")),
        cpus=_count(data.get("cpus")),
        memory_total_mib=_count(data.get("memory_total_mib")),
        memory_free_mib=_count(data.get("memory_free_mib")),
        guests=guests,
        boot=_text(data.get("boot")) or "",
        cluster=cluster if isinstance(cluster, dict) else None,
        shared_mounts=_paths(data.get("shared_mounts")),
        ts=_time(data.get("ts")),
        sent_at=sent_at(data),
    )
    return beat, names


@dataclass(slots=True)
class Batch:
    """What one ingest round stores, in one call: the newest heartbeat per host, lifecycle
    events (host, guest, state) and health events (host, guest, check, detail), all received
    at ``received`` (the console's clock). ``texts``: heartbeats as they came (the JSON text
    each was parsed from), kept as they are rather than encoded again."""

    received: float
    heartbeats: dict[str, dict[str, Any]] = field(default_factory=dict)
    lifecycle: list[tuple[str, str, str]] = field(default_factory=list)
    health: list[tuple[str, str, str, str]] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.heartbeats or self.lifecycle or self.health)


@dataclass(frozen=True)
class HostReport:
    """The latest word from one host's agent, as the runner needs it: ``beat`` decoded
    (``decode_heartbeat``, once: `overlay` hands its decoding in), ``heartbeat`` the message as
    it came."""

    host: str
    received: float  # console clock
    heartbeat: dict[str, Any]
    running: frozenset[str] = field(default_factory=frozenset)
    #: guest -> (check, detail): failed health checks (the heartbeat's, and newer events)
    unhealthy: dict[str, tuple[str, str]] = field(default_factory=dict)
    decoded: Heartbeat | None = field(default=None, compare=False, repr=False)

    @property
    def beat(self) -> Heartbeat:
        if self.decoded is None:  # frozen: kept in the instance's dict, decoded once
            object.__setattr__(self, "decoded", decode_heartbeat(self.host, self.heartbeat))
        assert self.decoded is not None
        return self.decoded


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


#: lifecycle states that mean a copy of the guest now runs on the host, and that none does
STARTED_EVENTS = frozenset({"started", "resumed"})
GONE_EVENTS = frozenset({"stopped", "crashed", "migrated", "undefined"})
#: how many tick durations are kept per cluster (the last five minutes at one tick a second)
TICKS_KEPT = 300


#: a shutdown mark of an agent that reports no boot id lapses after this long
SHUTDOWN_MARK_MAX_AGE_S = 3600.0


def shutdown_holds(mark: dict[str, Any], report: HostReport, now: float) -> bool:
    """A shutdown mark ``{"at", "boot"}`` still holds while the host reports the boot it was
    made for: once the host comes back (a new agent process, a new boot id) it lapses by
    itself. For an agent that reports no boot id, it holds ``SHUTDOWN_MARK_MAX_AGE_S``."""
    if mark.get("boot"):
        return bool(mark["boot"] == str(report.heartbeat.get("boot") or ""))
    return now - float(mark.get("at", 0.0)) < SHUTDOWN_MARK_MAX_AGE_S


def overlay(
    host: str,
    received: float,
    hb: dict[str, Any],
    events: dict[str, tuple[str, float]],
    health: dict[str, tuple[str, str, float]] | None = None,
) -> HostReport:
    """A host's report: its heartbeat's guests, with the lifecycle events newer than it
    ``{guest: (state, received)}`` applied on top (an older event is outdated by the beat);
    its failed health checks: the heartbeat's ``unhealthy``, with the health events
    ``{guest: (check, detail, received)}`` newer than it added, and dropped for a guest that
    started since (a fresh run)."""
    # every active guest (running, paused, ...) has a QEMU process: a copy exists
    beat, names = _decode(host, hb)
    running = set(names) if events else None  # the decoded names as they are when no event
    started: dict[str, float] = {}
    for guest, (state, at) in events.items():
        if state == "started":
            started[guest] = at
        if at <= received or running is None:
            continue  # the heartbeat is newer than the event
        if state in STARTED_EVENTS:
            running.add(guest)
        elif state in GONE_EVENTS:
            running.discard(guest)
    unhealthy = _unhealthy(hb.get("unhealthy"))
    for guest, (check, detail, at) in (health or {}).items():
        if at > received and at >= started.get(guest, 0.0):
            unhealthy[guest] = (check, detail)
    for guest, at in started.items():
        if at > received:
            unhealthy.pop(guest, None)
    return HostReport(
        host, received, hb, names if running is None else frozenset(running), unhealthy, beat
    )


def _unhealthy(raw: object) -> dict[str, tuple[str, str]]:
    """A heartbeat's ``unhealthy`` (guest -> {check, detail}); anything malformed is dropped."""
    out: dict[str, tuple[str, str]] = {}
    if isinstance(raw, dict):
        for guest, v in raw.items():
            if isinstance(guest, str) and isinstance(v, dict) and isinstance(v.get("check"), str):
                out[guest] = (v["check"], str(v.get("detail", "")))
    return out


def heartbeat_lag(beats: Iterator[tuple[float, dict[str, Any]]]) -> float:
    """Median over hosts of receive time - the agent's ``sent_at`` (0.0 without any)."""
    lags = []
    for received, hb in beats:
        sent = sent_at(hb)
        if sent > 0:
            lags.append(received - sent)
    return max(0.0, statistics.median(lags)) if lags else 0.0


def ingest_status_of(
    progress: tuple[float, float, int] | None, hb_lag: float, now: float
) -> IngestStatus:
    """``IngestStatus`` from the drainer's last report (at, caught_up_at, backlog)."""
    if progress is None:
        return IngestStatus(0.0, 0, hb_lag, None)
    at, caught_up, backlog = progress
    behind = now - caught_up if backlog else now - at - DRAIN_WAIT_S
    return IngestStatus(max(0.0, behind, hb_lag), backlog, hb_lag, at)


class Lease(Protocol):
    """A lock while it is held (true if it was taken); see ``RedisLease``."""

    taken: bool

    def __bool__(self) -> bool: ...

    @property
    def held(self) -> bool: ...

    def check(self) -> None:
        """Raise `LockLost` unless this holder still holds the lock."""

    def release(self) -> None: ...


class Store(Protocol):
    """The runtime's fast state (see the module's docstring). Times are the console's clock."""

    #: the store's clock: the runtime's "now" wherever no time was passed in
    clock: Callable[[], float]

    # heartbeats and lifecycle events
    def put_heartbeat(self, host: str, message: dict[str, Any], received: float) -> None: ...
    def put_lifecycle(self, host: str, guest: str, state: str, received: float) -> None: ...
    def put_batch(self, batch: Batch) -> None: ...

    def memberships(self, hosts: list[str]) -> dict[str, dict[str, Any] | None]:
        """Each host's corosync membership and quorum of its latest heartbeat (None where
        corosync is absent), without reading or decoding the heartbeats: a page's cheap read."""

    def reports(self, hosts: list[str]) -> dict[str, HostReport]:
        """Latest heartbeat per host, with lifecycle events newer than it applied on top."""

    def view(
        self, hosts: list[str], now: float | None = None
    ) -> tuple[dict[str, HostReport], IngestStatus]:
        """``reports(hosts)`` and ``ingest_status(now)`` at once (the runner's read of a tick)."""

    def forget_host(self, host: str) -> None: ...

    # clean shutdowns (agent/shutdown.py)
    def mark_shutdown(self, host: str, received: float) -> None:
        """``host`` announced a clean shutdown, for the boot its last heartbeat came from."""

    def clear_shutdown(self, host: str) -> None:
        """The shutdown ``host`` announced is off (e.g. its removal failed: it stays)."""

    def shutting_down(self, reports: dict[str, HostReport], now: float) -> set[str]:
        """The hosts whose shutdown mark still holds (``shutdown_holds``)."""

    # how far behind the console's view is
    def record_ingest(self, at: float, caught_up_at: float, backlog: int) -> None: ...
    def ingest_status(self, now: float | None = None) -> IngestStatus: ...
    def ingest_lag(self, now: float | None = None) -> float: ...
    def view_since(self, now: float) -> float:
        """Since when the view of heartbeats has been kept without a break."""

    # one runner at a time, and wakes that are never lost
    def lock(
        self, name: str, ttl_s: float = LOCK_TTL_S, max_hold_s: float = LOCK_MAX_HOLD_S
    ) -> contextlib.AbstractContextManager[Lease]: ...
    def lock_left_s(self, name: str) -> float | None: ...
    def request(self, name: str) -> None: ...
    def take_request(self, name: str) -> bool: ...
    def drop_commands(self, host: str) -> None:
        """Throw away the commands still queued for a host being fenced."""

    # the runner's tick times and the pages' change signal
    def record_tick(
        self, cluster_id: int, seconds: float, at: float, cpu_s: float | None = None
    ) -> None: ...
    def last_ticks(self, cluster_ids: list[int]) -> dict[int, float | None]: ...
    def recent_ticks(self, cluster_id: int) -> list[float]: ...
    def recent_tick_cpu(self, cluster_id: int) -> list[float]:
        """The recent ticks' CPU time (s, the ticking thread's), where it was recorded: on a
        shared machine the wall time mostly measures waiting for a CPU."""

    def publish_change(self, cluster_id: int) -> None:
        """Tell the open pages of a cluster that it changed (best effort)."""

    # the pages' answers kept between ticks (the cluster page's policy panel: panel.py)
    def get_panel(self, cluster_id: int, watch_s: float = 0.0) -> str | None:
        """The cluster's kept panel (its text), marking it watched for ``watch_s``."""

    def put_panel(self, cluster_id: int, text: str) -> None: ...
    def watched_panels(self, cluster_ids: list[int]) -> list[int]:
        """The clusters whose panel was read within its ``watch_s``."""


class _Shortcuts:
    """What both stores derive from their batch and status calls."""

    def put_batch(self, batch: Batch) -> None:
        raise NotImplementedError

    def ingest_status(self, now: float | None = None) -> IngestStatus:
        raise NotImplementedError

    def put_heartbeat(self, host: str, message: dict[str, Any], received: float) -> None:
        self.put_batch(Batch(received, heartbeats={host: message}))

    def put_lifecycle(self, host: str, guest: str, state: str, received: float) -> None:
        self.put_batch(Batch(received, lifecycle=[(host, guest, state)]))

    def ingest_lag(self, now: float | None = None) -> float:
        """Seconds by which the console's view of the hosts may be behind (0.0 when keeping up):
        see ``IngestStatus.lag_s``."""
        return self.ingest_status(now).lag_s


class RedisStore(_Shortcuts):
    """``Store`` on Redis: every call one round trip; shared by every console process."""

    def __init__(
        self,
        r: redis.Redis | None = None,
        prefix: str = PREFIX,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.r = r or client()
        self.p = prefix
        self.clock = clock
        self._first_look: float | None = None  # the first view_since() of this process

    # --- heartbeats and lifecycle events ---------------------------------------------------
    def put_batch(self, batch: Batch) -> None:
        """In one round trip. A heartbeat with its text in ``batch.texts`` is stored as that
        text, not encoded again (the drainer's JSON encoding of 128 heartbeats a second was a
        sixth of its time)."""
        pipe = self.r.pipeline(transaction=False)
        received, heartbeats, texts = batch.received, batch.heartbeats, batch.texts
        if heartbeats:
            at = json.dumps(received)
            pipe.hset(
                f"{self.p}hb",
                mapping={
                    host: json.dumps({"received": received, "hb": hb})
                    if (text := texts.get(host)) is None
                    else f'{{"received": {at}, "hb": {text}}}'
                    for host, hb in heartbeats.items()
                },
            )
            stack = {host: json.dumps(hb.get("cluster")) for host, hb in heartbeats.items()}
            pipe.hset(f"{self.p}stack", mapping=stack)
        for host, guest, state in batch.lifecycle:
            event = json.dumps({"state": state, "at": received})
            pipe.hset(f"{self.p}ev:{host}", f"{LIFE}:{guest}", event)
        for host, guest, check, detail in batch.health:
            event = json.dumps({"check": check, "detail": detail, "at": received})
            pipe.hset(f"{self.p}ev:{host}", f"{HEALTH}:{guest}", event)
        pipe.execute()

    def _ask_events(self, pipe: Any, hosts: list[str]) -> None:
        """Queue the read of each host's lifecycle and health events (one answer a host: both
        kinds live in one hash, told apart by the field's prefix)."""
        for host in hosts:
            pipe.hgetall(f"{self.p}ev:{host}")

    @staticmethod
    def _host_reports(
        hosts: list[str], heartbeats: dict[str, dict[str, Any]], answers: list[Any]
    ) -> dict[str, HostReport]:
        """The reports of ``hosts`` that have a heartbeat: ``heartbeats`` host -> the stored
        ``{"received", "hb"}``, ``answers`` the answer a host of ``_ask_events``."""
        out: dict[str, HostReport] = {}
        for host, stored in zip(hosts, answers, strict=True):
            data = heartbeats.get(host)
            if data is None:
                continue
            events: dict[str, tuple[str, float]] = {}
            failed: dict[str, tuple[str, str, float]] = {}
            for key, raw in stored.items():
                kind, _, guest = key.partition(":")
                e = json.loads(raw)
                if kind == LIFE:
                    events[guest] = (e["state"], float(e["at"]))
                elif kind == HEALTH:
                    failed[guest] = (str(e["check"]), str(e["detail"]), float(e["at"]))
            out[host] = overlay(host, float(data["received"]), data["hb"], events, failed)
        return out

    @staticmethod
    def _ingest_of(
        progress: dict[str, str], heartbeats: Iterable[dict[str, Any]], now: float
    ) -> IngestStatus:
        """``IngestStatus`` from the stored drainer's report and the stored heartbeats."""
        hb_lag = heartbeat_lag((float(d["received"]), d["hb"]) for d in heartbeats)
        report = (
            (float(progress["at"]), float(progress["caught_up_at"]), int(progress["backlog"]))
            if progress
            else None
        )
        return ingest_status_of(report, hb_lag, now)

    def memberships(self, hosts: list[str]) -> dict[str, dict[str, Any] | None]:
        if not hosts:
            return {}
        stored: list[Any] = self.r.hmget(f"{self.p}stack", hosts)  # type: ignore[assignment]
        return {h: json.loads(raw) for h, raw in zip(hosts, stored, strict=True) if raw}

    def reports(self, hosts: list[str]) -> dict[str, HostReport]:
        """Latest heartbeat per host, with lifecycle events newer than it applied on top."""
        if not hosts:
            return {}
        pipe = self.r.pipeline()
        pipe.hmget(f"{self.p}hb", hosts)
        self._ask_events(pipe, hosts)
        answers = pipe.execute()
        beats = {h: json.loads(raw) for h, raw in zip(hosts, answers[0], strict=True) if raw}
        return self._host_reports(hosts, beats, answers[1:])

    def view(
        self, hosts: list[str], now: float | None = None
    ) -> tuple[dict[str, HostReport], IngestStatus]:
        """``reports`` and ``ingest_status`` in one round trip, each heartbeat parsed once."""
        now = self.clock() if now is None else now
        pipe = self.r.pipeline()  # MULTI: heartbeats and events as of one moment
        pipe.hgetall(f"{self.p}ingest")
        pipe.hgetall(f"{self.p}hb")
        self._ask_events(pipe, hosts)
        answers = pipe.execute()
        heartbeats = {h: json.loads(raw) for h, raw in answers[1].items()}
        reports = self._host_reports(hosts, heartbeats, answers[2:])
        return reports, self._ingest_of(answers[0], heartbeats.values(), now)

    def forget_host(self, host: str) -> None:
        self.r.hdel(f"{self.p}hb", host)
        self.r.hdel(f"{self.p}stack", host)
        self.r.hdel(f"{self.p}shutdown", host)
        self.r.delete(f"{self.p}ev:{host}")

    # --- clean shutdowns (agent/shutdown.py) -----------------------------------------------
    def mark_shutdown(self, host: str, received: float) -> None:
        """``host`` announced a clean shutdown. The mark holds the agent's boot id of its last
        heartbeat: it lapses by itself when the host comes back (a new agent, a new boot)."""
        raw: Any = self.r.hget(f"{self.p}hb", host)
        boot = str(json.loads(raw)["hb"].get("boot") or "") if raw else ""
        self.r.hset(f"{self.p}shutdown", host, json.dumps({"at": received, "boot": boot}))

    def clear_shutdown(self, host: str) -> None:
        self.r.hdel(f"{self.p}shutdown", host)

    def shutting_down(self, reports: dict[str, HostReport], now: float) -> set[str]:
        if not reports:
            return set()
        names = sorted(reports)
        marks: list[Any] = self.r.hmget(f"{self.p}shutdown", names)  # type: ignore[assignment]
        return {
            host
            for host, raw in zip(names, marks, strict=True)
            if raw is not None and shutdown_holds(json.loads(raw), reports[host], now)
        }

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
        now = self.clock() if now is None else now
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(f"{self.p}ingest")
        pipe.hvals(f"{self.p}hb")
        progress, heartbeats = pipe.execute()
        return self._ingest_of(progress, (json.loads(raw) for raw in heartbeats), now)

    # --- one runner at a time, and wakes that are never lost -------------------------------
    @contextmanager
    def lock(
        self, name: str, ttl_s: float = LOCK_TTL_S, max_hold_s: float = LOCK_MAX_HOLD_S
    ) -> Iterator[RedisLease]:
        """Try to take the lock; yields a `Lease`, true if it was taken. Released only by its
        holder. The lock lives `ttl_s` and is renewed in the background while the holder works,
        so a holder that dies (or hangs, process and all) blocks others for at most `ttl_s`."""
        key, token, sent = f"{self.p}lock:{name}", uuid.uuid4().hex, time.monotonic()
        taken = bool(self.r.set(key, token, nx=True, px=int(ttl_s * 1000)))
        lease = RedisLease(self.r, key, token, ttl_s, max_hold_s, taken, sent)
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

    # --- the runner's tick times, the pages' change signal ---------------------------------
    def record_tick(
        self, cluster_id: int, seconds: float, at: float, cpu_s: float | None = None
    ) -> None:
        key = f"{self.p}ticks:{cluster_id}"
        pipe = self.r.pipeline()
        pipe.lpush(key, f"{seconds:.6f}")
        pipe.ltrim(key, 0, TICKS_KEPT - 1)
        if cpu_s is not None:
            pipe.lpush(f"{key}:cpu", f"{cpu_s:.6f}")
            pipe.ltrim(f"{key}:cpu", 0, TICKS_KEPT - 1)
        pipe.set(f"{self.p}ticked:{cluster_id}", f"{at:.3f}", ex=3600)
        pipe.execute()

    def last_ticks(self, cluster_ids: list[int]) -> dict[int, float | None]:
        if not cluster_ids:
            return {}
        values: Any = self.r.mget([f"{self.p}ticked:{c}" for c in cluster_ids])
        return {c: float(v) if v else None for c, v in zip(cluster_ids, values, strict=True)}

    def recent_ticks(self, cluster_id: int) -> list[float]:
        values: Any = self.r.lrange(f"{self.p}ticks:{cluster_id}", 0, TICKS_KEPT - 1)
        return [float(v) for v in values]

    def recent_tick_cpu(self, cluster_id: int) -> list[float]:
        values: Any = self.r.lrange(f"{self.p}ticks:{cluster_id}:cpu", 0, TICKS_KEPT - 1)
        return [float(v) for v in values]

    def change_channel(self, cluster_id: int) -> str:
        return f"{self.p}changed:{cluster_id}"

    def publish_change(self, cluster_id: int) -> None:
        with contextlib.suppress(redis.RedisError):
            self.r.publish(self.change_channel(cluster_id), "1")

    # --- the pages' kept answers -----------------------------------------------------------
    def get_panel(self, cluster_id: int, watch_s: float = 0.0) -> str | None:
        pipe = self.r.pipeline()
        pipe.get(f"{self.p}panel:{cluster_id}")
        if watch_s > 0:
            pipe.set(f"{self.p}panel-watched:{cluster_id}", "1", px=int(watch_s * 1000))
        value: Any = pipe.execute()[0]
        return None if value is None else str(value)

    def put_panel(self, cluster_id: int, text: str) -> None:
        self.r.set(f"{self.p}panel:{cluster_id}", text, ex=PANEL_KEPT_S)

    def watched_panels(self, cluster_ids: list[int]) -> list[int]:
        if not cluster_ids:
            return []
        values: Any = self.r.mget([f"{self.p}panel-watched:{c}" for c in cluster_ids])
        return [c for c, v in zip(cluster_ids, values, strict=True) if v]


def now() -> float:
    return time.time()


class LockLost(RuntimeError):
    """The holder's lock expired or was taken over: what it was about to commit is void."""


class RedisLease:
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


class MemoryLease:
    """A lock of a `MemoryStore` while it is held, on the store's clock. While its holder
    works it counts as renewed (as `RedisLease`'s thread renews it), up to ``max_hold_s``;
    ``stop_renewing()`` plays a holder that died or hung: the lock expires ``ttl_s`` later."""

    def __init__(
        self, store: MemoryStore, name: str, taken: bool, ttl_s: float, max_hold_s: float
    ) -> None:
        self.store, self.name, self.taken, self.ttl_s = store, name, taken, ttl_s
        t = store.clock()
        self.expires, self.deadline = t + ttl_s, t + max_hold_s
        self.renewing = taken
        self._lost = not taken

    def __bool__(self) -> bool:
        return self.taken

    def _renewed(self, t: float) -> bool:
        """Whether the lock is still this lease's at ``t`` (renewing it if its holder works)."""
        if self._lost or self.store._locks.get(self.name) is not self:
            self._lost = True
            return False
        if self.renewing and t < self.deadline:
            self.expires = max(self.expires, min(t + self.ttl_s, self.deadline))
        if t >= self.expires:
            self._lost = True
            return False
        return True

    @property
    def held(self) -> bool:
        with self.store._mutex:
            return self.taken and self._renewed(self.store.clock())

    def stop_renewing(self) -> None:
        self.renewing = False

    def check(self) -> None:
        if not self.held:
            raise LockLost(f"lock:{self.name} is no longer held by this runner")

    def release(self) -> None:
        with self.store._mutex:
            if self.taken and self.store._locks.get(self.name) is self:
                del self.store._locks[self.name]
            self._lost = True
            self.renewing = False


class MemoryStore(_Shortcuts):
    """``Store`` in this process, on the clock it is given: for the scenarios through the
    runtime (virtual time), the UI simulator and tests. Thread-safe; what it holds is lost with
    the process. ``restart()`` plays a Redis that lost its data (the view starts afresh)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._mutex = threading.RLock()
        self._hb: dict[str, tuple[float, dict[str, Any]]] = {}
        self._events: dict[str, dict[str, tuple[str, float]]] = {}
        self._health: dict[str, dict[str, tuple[str, str, float]]] = {}
        self._shutdowns: dict[str, dict[str, Any]] = {}
        self._ingest: tuple[float, float, int] | None = None
        self._locks: dict[str, MemoryLease] = {}
        self._requests: set[str] = set()
        self._ticks: dict[int, list[float]] = {}
        self._tick_cpu: dict[int, list[float]] = {}
        self._ticked: dict[int, float] = {}
        self._panels: dict[int, str] = {}
        self._watched: dict[int, float] = {}
        self._view: float | None = None
        self._first_look: float | None = None
        #: hosts whose queued commands were thrown away (``drop_commands``), in order
        self.dropped: list[str] = []
        #: called with the host by ``drop_commands`` (a fake transport empties its queue)
        self.on_drop: Callable[[str], None] | None = None
        #: cluster ids as their changes were published
        self.changes: list[int] = []

    # --- heartbeats and lifecycle events ---------------------------------------------------
    def put_batch(self, batch: Batch) -> None:
        received = batch.received
        with self._mutex:
            for host, hb in batch.heartbeats.items():
                self._hb[host] = (received, json.loads(json.dumps(hb)))  # a copy, as Redis keeps
            for host, guest, state in batch.lifecycle:
                self._events.setdefault(host, {})[guest] = (state, received)
            for host, guest, check, detail in batch.health:
                self._health.setdefault(host, {})[guest] = (check, detail, received)

    def memberships(self, hosts: list[str]) -> dict[str, dict[str, Any] | None]:
        with self._mutex:
            return {h: self._hb[h][1].get("cluster") for h in hosts if h in self._hb}

    def reports(self, hosts: list[str]) -> dict[str, HostReport]:
        with self._mutex:
            return {
                host: overlay(
                    host,
                    *self._hb[host],
                    dict(self._events.get(host, {})),
                    dict(self._health.get(host, {})),
                )
                for host in hosts
                if host in self._hb
            }

    def view(
        self, hosts: list[str], now: float | None = None
    ) -> tuple[dict[str, HostReport], IngestStatus]:
        return self.reports(hosts), self.ingest_status(now)

    def forget_host(self, host: str) -> None:
        with self._mutex:
            self._hb.pop(host, None)
            self._events.pop(host, None)
            self._health.pop(host, None)
            self._shutdowns.pop(host, None)

    def mark_shutdown(self, host: str, received: float) -> None:
        with self._mutex:
            hb = self._hb.get(host, (0.0, {}))[1]
            self._shutdowns[host] = {"at": received, "boot": str(hb.get("boot") or "")}

    def clear_shutdown(self, host: str) -> None:
        with self._mutex:
            self._shutdowns.pop(host, None)

    def shutting_down(self, reports: dict[str, HostReport], now: float) -> set[str]:
        with self._mutex:
            marks = dict(self._shutdowns)
        return {h for h, r in reports.items() if h in marks and shutdown_holds(marks[h], r, now)}

    # --- how far behind the console's view is -----------------------------------------------
    def record_ingest(self, at: float, caught_up_at: float, backlog: int) -> None:
        with self._mutex:
            self._ingest = (at, caught_up_at, backlog)

    def ingest_status(self, now: float | None = None) -> IngestStatus:
        now = self.clock() if now is None else now
        with self._mutex:
            hb_lag = heartbeat_lag(iter(list(self._hb.values())))
            return ingest_status_of(self._ingest, hb_lag, now)

    def view_since(self, now: float) -> float:
        with self._mutex:
            if self._view is None:
                self._view = now
            if self._first_look is None:
                self._first_look = now
            return max(self._view, self._first_look)

    def restart(self) -> None:
        """Lose everything, as a Redis restarted without its data: heartbeats, events, locks,
        wakes; the view of heartbeats starts afresh at the next look."""
        with self._mutex:
            self._hb.clear()
            self._events.clear()
            self._health.clear()
            self._shutdowns.clear()
            self._ingest = None
            self._locks.clear()
            self._requests.clear()
            self._panels.clear()
            self._watched.clear()
            self._view = None

    # --- one runner at a time, and wakes that are never lost -------------------------------
    def _holder(self, name: str) -> MemoryLease | None:
        lease = self._locks.get(name)
        if lease is not None and not lease._renewed(self.clock()):
            del self._locks[name]
            return None
        return lease

    @contextmanager
    def lock(
        self, name: str, ttl_s: float = LOCK_TTL_S, max_hold_s: float = LOCK_MAX_HOLD_S
    ) -> Iterator[MemoryLease]:
        """As `RedisStore.lock`, on the store's clock."""
        with self._mutex:
            taken = self._holder(name) is None
            lease = MemoryLease(self, name, taken, ttl_s, max_hold_s)
            if taken:
                self._locks[name] = lease
        try:
            yield lease
        finally:
            lease.release()

    def lock_left_s(self, name: str) -> float | None:
        with self._mutex:
            lease = self._holder(name)
            return 0.0 if lease is None else max(0.0, lease.expires - self.clock())

    def request(self, name: str) -> None:
        with self._mutex:
            self._requests.add(name)

    def take_request(self, name: str) -> bool:
        with self._mutex:
            if name in self._requests:
                self._requests.discard(name)
                return True
            return False

    def drop_commands(self, host: str) -> None:
        self.dropped.append(host)
        if self.on_drop is not None:
            self.on_drop(host)

    # --- the runner's tick times, the pages' change signal ---------------------------------
    def record_tick(
        self, cluster_id: int, seconds: float, at: float, cpu_s: float | None = None
    ) -> None:
        with self._mutex:
            for kept, value in ((self._ticks, seconds), (self._tick_cpu, cpu_s)):
                if value is not None:
                    row = kept.setdefault(cluster_id, [])
                    row.insert(0, value)
                    del row[TICKS_KEPT:]
            self._ticked[cluster_id] = at

    def last_ticks(self, cluster_ids: list[int]) -> dict[int, float | None]:
        with self._mutex:
            return {c: self._ticked.get(c) for c in cluster_ids}

    def recent_ticks(self, cluster_id: int) -> list[float]:
        with self._mutex:
            return list(self._ticks.get(cluster_id, []))

    def recent_tick_cpu(self, cluster_id: int) -> list[float]:
        with self._mutex:
            return list(self._tick_cpu.get(cluster_id, []))

    def publish_change(self, cluster_id: int) -> None:
        self.changes.append(cluster_id)

    # --- the pages' kept answers -----------------------------------------------------------
    def get_panel(self, cluster_id: int, watch_s: float = 0.0) -> str | None:
        with self._mutex:
            if watch_s > 0:
                self._watched[cluster_id] = self.clock() + watch_s
            return self._panels.get(cluster_id)

    def put_panel(self, cluster_id: int, text: str) -> None:
        with self._mutex:
            self._panels[cluster_id] = text

    def watched_panels(self, cluster_ids: list[int]) -> list[int]:
        with self._mutex:
            now = self.clock()
            return [c for c in cluster_ids if self._watched.get(c, -1.0) > now]


def _implementations(redis_store: RedisStore, memory_store: MemoryStore) -> tuple[Store, ...]:
    """Both implementations are a ``Store`` (mypy --strict checks it here)."""
    return redis_store, memory_store
