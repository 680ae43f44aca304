"""The ingest drainer (``manage.py haven_ingest``): takes every agent's messages off its inbound
list ``haven:in:<host>`` in batches and files them (console/ha/ingest.py).

One loop, one Redis connection for it:

1. ``LMPOP`` on every inbound key (the hosts the database knows, the console's own agent, and
   lists found by a SCAN every few seconds) until it finds none with a message, or, when
   many lists have messages, one pipeline of ``LPOP key COUNT`` for the rest; then ``LLEN`` of
   the lists that gave a full batch (the backlog);
2. the batch is filed: heartbeats and lifecycle events into the store in one pipeline, results
   handed to a small thread pool (the fast path: a result's transaction never holds up the
   heartbeats), runner wakes sent to the console's workers (the ``haven.console.wake`` task:
   a tick is ~100 ms of Python at 10,000 guests, and run in this process it held the GIL
   from the drain loop, which paused for up to seconds on a loaded machine);
3. when every list was empty, ``BLPOP`` on all of them (up to ``DRAIN_WAIT_S``), so a crash
   event is filed and its cluster's runner woken within milliseconds of its arrival.

After each round it records its progress (``Store.record_ingest``): the runner gets the ingest
lag from ``Store.ingest_lag()``. When no tick came for `BACKUP_AFTER_S` (beat or the workers
gone), the drainer ticks the runner itself, in its pool. A list whose key names a host the
console does not know is refused (logged once a minute) and emptied. The drainer also keeps the
agents' Redis users in place (console/ha/credentials.py): on start and every
``USERS_CHECK_S`` (one ``ACL USERS``), any missing user is re-created from the stored password
hash, so a Redis restart never locks an agent out for longer than that.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DatabaseError, close_old_connections

from agent.protocol import INBOUND_PREFIX, host_of_inbound_key, inbound_key
from console.core import broker
from console.ha import ingest, runner
from console.ha.store import DRAIN_WAIT_S, RedisStore, Store

log = logging.getLogger("haven.drain")
BATCH = 500  # per list and round
#: lists taken one ``LMPOP`` at a time in a round before the rest go in one pipeline
SINGLE_POPS = 8
#: while caught up, the drainer's progress is recorded at most this often
REPORT_EVERY_S = 0.1
SCAN_EVERY_S = 5.0
USERS_CHECK_S = 2.0
RESULT_ATTEMPTS = 5
RETRY_MAX_S = 0.5  # Redis back: draining again within half a second
BACKUP_CHECK_S = 1.0
#: a runner whose last tick is older than this is ticked by the drainer (beat's is 1 s)
BACKUP_AFTER_S = 2.5
#: a wake not taken by a worker within this long is dropped (beat's next tick sees the same)
WAKE_EXPIRES_S = 2.0


def send_wake(cluster_id: int) -> None:
    """A runner wake for the console's workers (one task on the ``console`` queue)."""
    from console.ha.tasks import wake

    wake.apply_async((cluster_id,), expires=WAKE_EXPIRES_S, retry=False)


@dataclass
class Totals:
    rounds: int = 0
    messages: int = 0
    heartbeats: int = 0
    events: int = 0
    results: int = 0
    refused: int = 0
    wakes: int = 0
    backup_ticks: int = 0


class Drainer:
    def __init__(
        self,
        store: RedisStore | None = None,
        *,
        workers: int = 4,
        run_cluster: Callable[[int, Store], object] | None = None,
        keep_users: bool = True,
        send_wake: Callable[[int], object] | None = send_wake,
    ) -> None:
        """`run_cluster` ticks a runner in this process (the backup ticks); `send_wake` is
        how a wake leaves (by default a task for the workers; None: ticked here too)."""
        self.store = store or RedisStore()  # the inbound lists are Redis lists
        self.r: Any = self.store.r  # redis-py's stubs type blocking replies as awaitables
        self.directory = ingest.Directory()
        self.refusals = ingest.Refusals()
        self.totals = Totals()
        self._run_cluster = run_cluster or runner.run
        self._send_wake = send_wake
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest-fast")
        self._queued: set[int] = set()  # clusters with a runner wake waiting in the pool
        self._queued_lock = threading.Lock()
        self._results_lock = threading.Lock()
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._applying = False
        self._stray: set[str] = set()
        self._scanned = -float("inf")
        self._start = 0  # where the next round starts in the list of inbound keys
        self._reported_at, self._reported_idle = -float("inf"), False
        self._users_checked = -float("inf")
        self._keep_users = keep_users
        self.caught_up_at = time.time()
        self._backup_checked = -float("inf")
        self._clusters: list[int] = []
        self._clusters_read = -float("inf")

    # --- which lists ------------------------------------------------------------------------
    def keys(self) -> list[str]:
        t = time.monotonic()
        if t - self._scanned > SCAN_EVERY_S:
            self._scanned = t
            keys: Any = self.r.scan_iter(match=f"{INBOUND_PREFIX}*", count=1000)
            found = {k if isinstance(k, str) else k.decode() for k in keys}
            self._stray = found
        hosts = set(self.directory.hosts()) | {settings.HAVEN_CONSOLE_AGENT}
        return sorted({inbound_key(h) for h in hosts} | self._stray)

    # --- one round --------------------------------------------------------------------------
    def _pop(self, keys: list[str]) -> tuple[list[tuple[str, Any]], int]:
        """Up to `BATCH` messages of every list; and how many are left (asked only of the
        lists that gave a full batch: any other was emptied). ``LMPOP`` takes the first
        list that has messages, so a quiet second (a few lists with a message each: 128
        heartbeats a second come one by one) costs a few short commands, not a pipeline of an
        ``LPOP`` per list (that cost the drainer a third of a core at 128 hosts); from
        `SINGLE_POPS` lists on, the rest go in one pipeline. Each round starts one list further
        on, so no list always comes first."""
        batch: list[tuple[str, Any]] = []
        full: list[str] = []

        def take(key: str, items: list[Any] | None) -> None:
            if items:
                if len(items) >= BATCH:
                    full.append(key)
                host = host_of_inbound_key(key)
                if host is not None:
                    batch.extend((host, item) for item in items)

        if not keys:
            return batch, 0
        start = self._start % len(keys)
        self._start += 1
        left = keys[start:] + keys[:start]
        for _ in range(SINGLE_POPS):
            got: Any = self.r.lmpop(len(left), *left, direction="LEFT", count=BATCH)
            if got is None:
                break  # every list is empty
            key, items = got
            take(key, items)
            left.remove(key)
            if not left:
                break
        else:  # messages in many lists: the others in one round trip
            pipe = self.r.pipeline(transaction=False)
            for key in left:
                pipe.lpop(key, BATCH)
            for key, items in zip(left, pipe.execute(), strict=True):
                take(key, items)
        backlog = 0
        if full:
            pipe = self.r.pipeline(transaction=False)
            for key in full:
                pipe.llen(key)
            backlog = sum(int(n or 0) for n in pipe.execute())
        return batch, backlog

    def round(self, wait_s: float = DRAIN_WAIT_S) -> int:
        """Drain once (blocking up to ``wait_s`` when nothing waits); return messages filed."""
        self._maybe_keep_users()
        keys = self.keys()
        batch, backlog = self._pop(keys)
        filed = 0
        if not batch and wait_s > 0:
            self._report(backlog=0)
            got = self.r.blpop(keys, timeout=wait_s)
            if got is not None:
                key, item = got
                key = key if isinstance(key, str) else key.decode()
                host = host_of_inbound_key(key)
                if host is not None:  # at once: a crash event must not wait for a round trip
                    self._file([(host, item)], time.time())
                    filed = 1
                batch, backlog = self._pop(keys)
        received = time.time()
        if batch:
            self._file(batch, received)
        self._report(backlog)
        self.totals.rounds += 1
        return filed + len(batch)

    def _file(self, batch: list[tuple[str, Any]], received: float) -> None:
        filed = ingest.sort(batch, self.store, self.directory, self.refusals, received)
        t = self.totals
        t.messages += len(batch)
        t.heartbeats += filed.heartbeats
        t.events += filed.events
        t.results += len(filed.results)
        t.refused += filed.refused
        for cluster_id in filed.wakes:
            self.wake(cluster_id)
        if filed.results:
            self._queue_results(filed.results)
        self._forget_strays(batch)

    def _forget_strays(self, batch: list[tuple[str, Any]]) -> None:
        """Lists of hosts the console does not know: emptied (their messages were refused)."""
        known = set(self.directory.hosts()) | {settings.HAVEN_CONSOLE_AGENT}
        for host in {h for h, _ in batch} - known:
            self.r.delete(inbound_key(host))

    def _report(self, backlog: int) -> None:
        """Record the progress; while caught up, at most every `REPORT_EVERY_S` (at 128
        heartbeats a second a round files about one: two writes a round were a tenth of the
        drainer's CPU). A report's age within that bound cannot make the console look
        behind: caught up, it is behind only `DRAIN_WAIT_S` after its last report."""
        at = time.time()
        if backlog == 0:
            self.caught_up_at = at
            if self._reported_idle and at - self._reported_at < REPORT_EVERY_S:
                return
        self.store.record_ingest(at, self.caught_up_at, backlog)
        self._reported_at, self._reported_idle = at, backlog == 0

    # --- the fast path ----------------------------------------------------------------------
    def wake(self, cluster_id: int) -> None:
        """Have the cluster's runner tick now: in a worker (`send_wake`), else here; a wake
        that cannot be sent is ticked here."""
        self.totals.wakes += 1
        if self._send_wake is not None:
            try:
                self._send_wake(cluster_id)
                return
            except Exception as exc:
                broker.log_failure(log, f"could not wake the runner of cluster {cluster_id}", exc)
        self._tick_here(cluster_id)

    def _tick_here(self, cluster_id: int) -> None:
        with self._queued_lock:
            if cluster_id in self._queued:
                return  # a wake waits already; it will see this batch too
            self._queued.add(cluster_id)
        self._pool.submit(self._run, cluster_id)

    def _run(self, cluster_id: int) -> None:
        with self._queued_lock:
            self._queued.discard(cluster_id)
        try:
            self._run_cluster(cluster_id, self.store)
        except Exception as exc:
            broker.log_failure(log, f"runner of cluster {cluster_id} failed", exc)
        finally:
            close_old_connections()

    def _queue_results(self, results: list[tuple[str, dict[str, Any]]]) -> None:
        """Results go to one applier at a time, which takes everything that came in meanwhile
        as one batch: a mass start's define results, taken in a dozen rounds, are a few
        transactions in order, not a dozen writers waiting on SQLite's one write lock."""
        with self._results_lock:
            self._pending.extend(results)
            if self._applying:
                return
            self._applying = True
        self._pool.submit(self._apply_pending)

    def _apply_pending(self) -> None:
        while True:
            with self._results_lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._applying = False
                    return
            try:
                self._results(batch)
            except Exception:  # never leave the applier marked busy
                log.exception("%d results could not be applied", len(batch))

    def _results(self, results: list[tuple[str, dict[str, Any]]]) -> None:
        """A batch's results in one transaction, applied together (jobs.apply_results: a
        mass start's 80 define results, one by one, took seconds on SQLite), the next stages
        they release dispatched together after it. A batch that fails for another reason
        than the database is applied again one result at a time (a savepoint each), so one
        bad result never holds up the others."""
        from django.db import transaction

        from console.jobs import services as jobs

        wakes: set[int] = set()
        for attempt in range(RESULT_ATTEMPTS):  # a locked database is worth waiting for
            try:
                try:
                    with transaction.atomic(), jobs.batched_dispatch():
                        wakes = ingest.apply_results(results)
                except DatabaseError:
                    raise  # the whole batch again
                except Exception:
                    # one bad result must not hold up the others: each on its own savepoint
                    log.exception("%d results could not be applied together", len(results))
                    with transaction.atomic(), jobs.batched_dispatch():
                        wakes = self._one_by_one(results)
                break
            except DatabaseError as exc:
                log.warning("%d results: %s; again", len(results), exc)
                time.sleep(0.2 * (attempt + 1))
            finally:
                close_old_connections()
        for cluster_id in wakes:
            self.wake(cluster_id)

    def _one_by_one(self, results: list[tuple[str, dict[str, Any]]]) -> set[int]:
        from django.db import transaction

        wakes: set[int] = set()
        for sender, message in results:
            try:
                with transaction.atomic():
                    cluster_id = ingest.apply_result(sender, message)
            except DatabaseError:
                raise  # the whole batch again
            except Exception:
                log.exception("result %s from %s could not be applied", message.get("id"), sender)
                continue
            if cluster_id is not None:
                wakes.add(cluster_id)
        return wakes

    # --- the agents' Redis users ------------------------------------------------------------
    def _maybe_keep_users(self) -> None:
        if not self._keep_users:
            return
        t = time.monotonic()
        if t - self._users_checked < USERS_CHECK_S:
            return
        self._users_checked = t
        from console.ha import credentials

        try:
            created = credentials.ensure_users(self.r)
        except Exception as exc:
            what = f"could not check the agents' Redis users (again in {USERS_CHECK_S:g} s)"
            broker.log_failure(log, what, exc)
            return
        finally:
            close_old_connections()
        if created:
            log.warning("re-created the Redis users of %s", ", ".join(created))

    # --- running ----------------------------------------------------------------------------
    # --- the backup ticker ------------------------------------------------------------------
    def _backup_ticks(self) -> None:
        """Celery beat ticks every runner each second; when it is gone (killed, restarting,
        its worker dead) the drainer ticks the runners whose last tick is older than
        `BACKUP_AFTER_S`, so HA never waits for a beat to come back. The runner's lock keeps
        it to one decision at a time whoever ticks."""
        t = time.monotonic()
        if t - self._backup_checked < BACKUP_CHECK_S:
            return
        self._backup_checked = t
        from console.clusters.models import Cluster
        from console.monitoring import ticks

        try:
            if t - self._clusters_read > 10.0:
                self._clusters = list(Cluster.objects.values_list("pk", flat=True))
                self._clusters_read = t
            now = time.time()
            for cluster_id, at in ticks.last_tick(self.store, self._clusters).items():
                if at is None or now - at > BACKUP_AFTER_S:
                    self.totals.backup_ticks += 1
                    self._tick_here(cluster_id)
        except Exception as exc:
            broker.log_failure(log, "backup tick check failed", exc)
        finally:
            close_old_connections()

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        log.info("ingest drainer started")
        backoff = 0.0
        while not stop.is_set():
            try:
                self.round()
                self._backup_ticks()
                backoff = 0.0
            except Exception as exc:  # Redis away: retry, one line per outage
                if not backoff:
                    log.warning("ingest paused: %s", exc)
                backoff = min(max(backoff * 2, 0.05), RETRY_MAX_S)
                stop.wait(backoff)

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)
