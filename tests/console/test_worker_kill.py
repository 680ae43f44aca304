"""A console worker killed (SIGKILL) while it holds the HA runner's lock, with real processes:
two workers, beat, the drainer and three agents on test:/// (as deploy/quickstart runs two
workers). The other worker decides again within the lock's ttl: HA stalls at most ~3 s, not
the 30 s of a lock that outlived its holder."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from console.ha.models import EngineState
from console.ha.store import LOCK_TTL_S
from tests.console.test_live import Live, _broker, placement, using_broker, wait_for
from tests.console.test_redis_restart import make_cluster, start_all

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def live(tmp_path: Path, settings: Any) -> Iterator[Live]:
    broker = _broker()
    with using_broker(broker, settings):
        live = Live(broker, tmp_path)
        live.workers = 2
        try:
            yield live
        finally:
            live.stop()


def _ticks(cluster: Any) -> int:
    return int(EngineState.objects.get(cluster=cluster).ticks)


def test_a_worker_killed_holding_the_lock_stalls_ha_for_at_most_the_ttl(
    live: Live, tmp_path: Path
) -> None:
    import redis
    from django.conf import settings

    cluster = make_cluster(tmp_path / "fence-calls.txt")
    expected = start_all(live)
    r = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    key = f"haven:lock:runner:{cluster.pk}"
    # Only "worker" is to run ticks: stop worker-2 at a moment it holds nothing (ticks still
    # advance without it: neither the runner's lock nor the database's write lock is its).
    other = live.procs["worker-2"]
    for _ in range(5):
        os.killpg(other.pid, signal.SIGSTOP)
        ticks = _ticks(cluster)
        deadline = time.monotonic() + LOCK_TTL_S + 3
        while _ticks(cluster) < ticks + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        if _ticks(cluster) >= ticks + 2:
            break
        os.killpg(other.pid, signal.SIGCONT)
        time.sleep(0.5)
    else:
        pytest.fail("worker-2 never stopped idle")
    try:
        deadline = time.monotonic() + 20
        while not r.exists(key):  # the lock we catch now is "worker"'s
            assert time.monotonic() < deadline, "never saw the runner's lock taken"
        os.killpg(live.procs["worker"].pid, signal.SIGKILL)
        killed = time.monotonic()
        before = _ticks(cluster)
    finally:
        os.killpg(other.pid, signal.SIGCONT)
    live.procs.pop("worker").wait()
    # the dead worker's lock is still there, but it expires on its own within the lease
    # (what bounds the stall), and nobody ticks while it holds
    ttl_ms = r.pttl(key)
    assert 0 < ttl_ms <= LOCK_TTL_S * 1000, ttl_ms
    assert _ticks(cluster) == before
    wait_for("a tick by the other worker", lambda: _ticks(cluster) > before, live, 15)
    stall = time.monotonic() - killed
    # the stall is measured, not asserted (a timing target; the chaos runs report it)
    print(f"\nHA stall after a worker holding the lock was killed: {stall:.2f} s")
    assert placement() == expected
