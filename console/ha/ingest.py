"""What agents send (heartbeats, lifecycle events, results), believed only for their sender.

The sender is the host whose inbound list (``haven:in:<host>``, which only that host's Redis
user may write) the message came from, never the body's ``host`` field: a body naming another
host is refused (logged once per sender and minute). The drainer (console/ha/drain.py)
takes messages in batches; ``sort`` files a batch: heartbeats (the newest per host) and
lifecycle events go to the Redis store in one pipeline, without a database query (host ->
cluster comes from ``Directory``, an in-process cache); results are handed back to be applied
to their jobs (``apply_results``: a batch in one database transaction). A lifecycle event
that may need recovery, a fence result and a failed action wake the runner at once; other
results wait for its next tick. ``handle`` does all of it for one message (tests, the UI simulator).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import DatabaseError

from agent.protocol import PROTOCOL_VERSION
from console.clusters.models import Host
from console.ha.store import Batch, Store
from console.jobs import services as jobs
from console.jobs.models import FINISHED_STATUSES, JobStatus

log = logging.getLogger("haven.ingest")
WAKING_STATES = frozenset({"stopped", "crashed", "started", "migrated", "undefined", "panicked"})
KINDS = frozenset({"heartbeat", "event", "result"})
REFUSAL_LOG_INTERVAL_S = 60.0


class Refused(ValueError):
    """A message that is not believed; the text says why (never the body)."""


def check(sender: str, message: object) -> dict[str, Any]:
    """The message if it is a protocol message from ``sender`` about ``sender``; else Refused."""
    if not isinstance(message, dict):
        raise Refused("not a JSON object")
    if message.get("v") != PROTOCOL_VERSION:
        raise Refused(f"protocol version {message.get('v')!r} (the console speaks v2)")
    kind = message.get("kind")
    if kind not in KINDS:
        raise Refused(f"unknown kind {kind!r}")
    if message.get("host") != sender:
        raise Refused(f"it speaks for host {message.get('host')!r}")
    if kind == "heartbeat":
        guests = message.get("guests")
        if guests is not None and not (
            isinstance(guests, list)
            and all(isinstance(g, dict) and isinstance(g.get("name"), str) for g in guests)
        ):
            raise Refused("its guests are not a list of {name, uuid, state}")
    return message


class Refusals:
    """Logs refused messages once per sender and minute (a flood never floods the log)."""

    def __init__(self, interval_s: float = REFUSAL_LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.count = 0
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def refuse(self, sender: str, why: str) -> None:
        with self._lock:
            self.count += 1
            t = time.monotonic()
            if t - self._last.get(sender, -self.interval_s) < self.interval_s:
                return
            self._last[sender] = t
        log.warning("refused a message on %s's inbound list: %s", sender, why)


class Directory:
    """Host name -> cluster id, from one query; reloaded on a miss (at most once a second, so an
    unknown sender cannot make a query per message) and every ``ttl_s``."""

    def __init__(self, ttl_s: float = 10.0, miss_interval_s: float = 1.0) -> None:
        self.ttl_s, self.miss_interval_s = ttl_s, miss_interval_s
        self._clusters: dict[str, int] = {}
        self._loaded = -float("inf")
        self.loads = 0

    def load(self) -> None:
        self._clusters = dict(Host.objects.values_list("name", "cluster_id"))
        self._loaded = time.monotonic()
        self.loads += 1

    def _fresh(self, max_age_s: float) -> None:
        if time.monotonic() - self._loaded > max_age_s:
            try:
                self.load()
            except DatabaseError as exc:  # e.g. SQLite locked: keep what is known, retry later
                self._loaded = time.monotonic() - self.ttl_s + self.miss_interval_s
                log.warning("host list not reloaded (%s); using the one from before", exc)

    def hosts(self) -> list[str]:
        self._fresh(self.ttl_s)
        return sorted(self._clusters)

    def cluster_of(self, host: str) -> int | None:
        self._fresh(self.ttl_s)
        if host not in self._clusters:
            self._fresh(self.miss_interval_s)
        return self._clusters.get(host)


@dataclass
class Sorted:
    """A batch filed: what the drainer does next."""

    wakes: set[int] = field(default_factory=set)
    results: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    heartbeats: int = 0
    events: int = 0
    refused: int = 0
    ignored: int = 0


def sort(
    batch: Iterable[tuple[str, Any]],
    store: Store,
    directory: Directory,
    refusals: Refusals,
    received: float | None = None,
) -> Sorted:
    """File a batch of (sender, raw JSON or dict); heartbeats and events written in one pipeline."""
    received = store.clock() if received is None else received
    out = Sorted()
    filed = Batch(received)
    heartbeats, texts = filed.heartbeats, filed.texts
    lifecycle, health = filed.lifecycle, filed.health
    shutdowns: list[str] = []
    console_agent = settings.HAVEN_CONSOLE_AGENT
    for sender, raw in batch:
        try:
            message = check(sender, json.loads(raw) if isinstance(raw, str | bytes) else raw)
        except (Refused, ValueError) as exc:
            out.refused += 1
            refusals.refuse(sender, str(exc) if isinstance(exc, Refused) else "not JSON")
            continue
        kind = message["kind"]
        if kind == "result":
            out.results.append((sender, message))
            continue
        cluster_id = directory.cluster_of(sender)
        if cluster_id is None:
            if sender != console_agent:  # the console's own agent is no host
                out.refused += 1
                refusals.refuse(sender, "no such host")
            else:
                out.ignored += 1
            continue
        if kind == "heartbeat":
            if message.get("guests") is None:
                # libvirt unreachable: what runs is unknown, so this is no proof of life
                out.ignored += 1
                continue
            heartbeats[sender] = message  # in order: the newest wins
            if isinstance(raw, str):
                texts[sender] = raw  # stored as it came: not encoded again
            else:
                texts.pop(sender, None)
            out.heartbeats += 1
        elif message.get("event") == "health":
            # a guest failed a health check: recovery may be needed at once
            guest, failed = str(message.get("guest", "")), str(message.get("state", ""))
            health.append((sender, guest, failed, str(message.get("detail", ""))[:500]))
            out.events += 1
            out.wakes.add(cluster_id)
        elif message.get("event") == "shutdown":
            shutdowns.append(sender)  # a clean shutdown: the engine drains it, never fences it
            out.wakes.add(cluster_id)
            out.events += 1
        elif message.get("event") == "lifecycle":
            guest, state = str(message.get("guest", "")), str(message.get("state", ""))
            lifecycle.append((sender, guest, state))
            out.events += 1
            if state in WAKING_STATES:
                out.wakes.add(cluster_id)
        else:
            out.ignored += 1
    if filed:
        store.put_batch(filed)
    for host in shutdowns:  # after this batch's heartbeats: the mark names the current boot
        store.mark_shutdown(host, received)
        log.info("%s announced a clean shutdown: it is drained by live migration", host)
    return out


def apply_result(sender: str, message: dict[str, Any]) -> int | None:
    """Apply a result to its step (only if ``sender`` is the host it was sent to); return the
    cluster whose runner should wake, or None."""
    return next(iter(apply_results([(sender, message)])), None)


def apply_results(results: list[tuple[str, dict[str, Any]]]) -> set[int]:
    """`apply_result` for a batch, in one transaction (jobs.apply_results); the clusters whose
    runner should wake."""
    wakes: set[int] = set()
    for step in jobs.apply_results(list(results)):
        if step is None:
            continue
        job = step.job  # as the batch moved it on
        # The engine hears of every finished action at its next tick (≤ 1 s). It is woken at
        # once only where recovery waits on the outcome: a fence, or an action that failed.
        # A hung guest's destroy wakes it too: its restart waits on it (the crash budget).
        if (
            job.action_id
            and job.status in FINISHED_STATUSES
            and (
                job.kind == "fence"
                or job.status != JobStatus.SUCCEEDED
                or job.params.get("reason") == "hung"
            )
            and job.cluster_id is not None
        ):
            wakes.add(job.cluster_id)
    return wakes


_directory: Directory | None = None
_refusals = Refusals()


def handle(message: Any, store: Store, received: float | None = None, *, sender: str) -> int | None:
    """Take one message from ``sender``; return the cluster id whose runner should wake."""
    global _directory
    if _directory is None:
        _directory = Directory(ttl_s=0.0)  # tests create hosts between messages
    filed = sort([(sender, message)], store, _directory, _refusals, received)
    wake = next(iter(filed.wakes), None)
    for result_sender, result in filed.results:
        wake = apply_result(result_sender, result) or wake
    return wake
