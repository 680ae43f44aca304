"""The runner's lock on a real Redis: short-lived, renewed while a tick runs, and a tick that
lost it writes nothing. Also the "no data" signal (`Store.view_since`) and the tick's clock.

A holder that dies is a real process killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.db.models import F

from agent.protocol import agent_queue
from console import engine
from console.ha import runner, snapshot
from console.ha.models import EngineState
from console.ha.store import LOCK_TTL_S, LockLost, RedisStore, Store
from console.jobs.models import Job
from console.jobs.services import pending_engine_results
from tests.console.test_runtime import run

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.redis

HOLDER = """
import sys, time, redis
from console.ha.store import RedisStore
url, prefix, name = sys.argv[1:4]
s = RedisStore(redis.Redis.from_url(url, decode_responses=True), prefix=prefix)
with s.lock(name) as lease:
    print("taken" if lease else "busy", flush=True)
    time.sleep(600)
"""


def _holder(store: Store, name: str) -> subprocess.Popen[str]:
    url = store.r.connection_pool.connection_kwargs
    redis_url = f"redis://{url.get('host', '127.0.0.1')}:{url.get('port', 6379)}/{url.get('db', 0)}"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, redis_url, store.p, name],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "taken"
    return proc


def test_a_dead_holder_blocks_others_for_at_most_the_ttl(store: Store) -> None:
    assert LOCK_TTL_S <= 3.0
    proc = _holder(store, "runner:dead")
    try:
        # alive, it keeps its lock well past the ttl (renewed by its own thread)
        until = time.monotonic() + 2 * LOCK_TTL_S
        while time.monotonic() < until:
            with store.lock("runner:dead") as lease:
                assert not lease
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    killed = time.monotonic()
    while True:
        with store.lock("runner:dead") as lease:
            if lease:
                break
        assert time.monotonic() - killed < 10, "the dead holder's lock never expired"
        time.sleep(0.02)
    takeover = time.monotonic() - killed
    print(f"takeover after kill -9: {takeover:.2f} s")
    assert takeover <= 3.5


@pytest.mark.django_db(transaction=True)
def test_a_long_tick_keeps_its_lock(
    cluster3: Any, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, agents = cluster3
    agents.heartbeat(time.time())
    real_tick = engine.tick
    contenders: list[bool] = []

    def slow_tick(snap: engine.Snapshot, now: float) -> engine.Decision:
        def contend() -> None:  # another runner, in another thread, tries all along
            with store.lock(f"runner:{cluster.pk}") as lease:
                contenders.append(bool(lease))

        deadline = time.monotonic() + LOCK_TTL_S + 1.5
        while time.monotonic() < deadline:
            t = threading.Thread(target=contend)
            t.start()
            t.join()
            time.sleep(0.25)
        return real_tick(snap, now)

    monkeypatch.setattr(engine, "tick", slow_tick)
    before = EngineState.objects.filter(cluster=cluster).values_list("ticks", flat=True).first()
    reports = runner.run(cluster.pk, store)
    assert len(reports) == 1 and reports[0].duration_s > LOCK_TTL_S
    assert contenders and not any(contenders)  # nobody else got in during the long tick
    assert EngineState.objects.get(cluster=cluster).ticks == (before or 0) + 1  # committed


@pytest.mark.django_db(transaction=True)
def test_a_tick_that_lost_its_lock_writes_nothing(
    cluster3: Any, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, agents = cluster3
    t = run(cluster, agents, store, 1000.0, 1005.0)
    agents.power_off("et-virt05")  # the next ticks would fence it
    real_tick = engine.tick

    def tick_then_lose_the_lock(snap: engine.Snapshot, now: float) -> engine.Decision:
        decision = real_tick(snap, now)
        # the lock expired (a stall) and another runner took it while this one decided
        store.r.set(f"{store.p}lock:runner:{cluster.pk}", "another-runner", px=3000)
        return decision

    monkeypatch.setattr(engine, "tick", tick_then_lose_the_lock)
    monkeypatch.setattr(store, "clock", lambda: t + 8)  # the runner reads the store's clock
    agents.heartbeat(t + 8)  # the two others are alive
    state = EngineState.objects.get(cluster=cluster)
    jobs = Job.objects.count()
    assert runner.run(cluster.pk, store) == []  # rolled back, logged
    assert Job.objects.count() == jobs  # no fence job
    after = EngineState.objects.get(cluster=cluster)
    assert (after.ticks, after.status_json) == (state.ticks, state.status_json)
    # the other runner's lock is untouched by the loser's release
    assert store.r.get(f"{store.p}lock:runner:{cluster.pk}") == "another-runner"
    store.r.delete(f"{store.p}lock:runner:{cluster.pk}")
    monkeypatch.setattr(engine, "tick", real_tick)
    assert len(runner.run(cluster.pk, store)) == 1  # the lock free again: the fence goes out
    assert Job.objects.filter(kind="fence").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_snapshot_overtaken_by_another_runner_is_not_committed(
    cluster3: Any, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state row is the lock's fencing token: even a runner that never noticed it lost
    the lock (paused between its last renewal and its commit) cannot write a stale decision."""
    cluster, agents = cluster3
    t = run(cluster, agents, store, 1000.0, 1005.0)
    agents.power_off("et-virt05")
    real_tick = engine.tick

    def another_runner_commits_meanwhile(snap: engine.Snapshot, now: float) -> engine.Decision:
        EngineState.objects.filter(cluster=cluster).update(ticks=F("ticks") + 1)
        return real_tick(snap, now)

    monkeypatch.setattr(engine, "tick", another_runner_commits_meanwhile)
    jobs = Job.objects.count()
    with pytest.raises(LockLost):
        runner.tick_once(cluster.pk, store, now=t + 8)
    assert Job.objects.count() == jobs


def test_view_of_heartbeats_starts_afresh_on_a_new_process_and_an_emptied_redis(
    store: Store,
) -> None:
    assert store.view_since(100.0) == 100.0
    assert store.view_since(160.0) == 100.0  # continuous
    # another runner process (a new Store) sees its own start, not the store's older one
    other = RedisStore(store.r, prefix=store.p)
    assert other.view_since(170.0) == 170.0
    assert store.view_since(171.0) == 100.0
    # Redis emptied (restart without persistence, FLUSHALL, a replacement): afresh
    store.r.delete(f"{store.p}view")
    assert store.view_since(200.0) == 200.0
    assert store.view_since(230.0) == 200.0
    # Redis restarted with its data (AOF): the marker survives but names another server run
    store.r.set(f"{store.p}view", "0123456789abcdef 200.0")
    assert store.view_since(240.0) == 240.0
    assert store.view_since(250.0) == 240.0


@pytest.mark.django_db(transaction=True)
def test_the_tick_time_is_when_the_heartbeats_were_read(
    cluster3: Any, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow load (here: 1.5 s after the heartbeats were read) must not age the heartbeats."""
    cluster, agents = cluster3
    read_at: list[float] = []
    real_view, real_results = store.view, pending_engine_results

    def view(hosts: list[str], now: float | None = None) -> Any:
        read_at.append(time.time())
        return real_view(hosts, now)

    def slow_results(c: Any) -> Any:
        time.sleep(1.5)
        return real_results(c)

    monkeypatch.setattr(store, "view", view)
    monkeypatch.setattr("console.ha.snapshot.pending_engine_results", slow_results)
    agents.heartbeat(time.time())
    loaded = snapshot.load(cluster, store)
    assert read_at and loaded.now <= read_at[0]
    assert time.time() - loaded.now >= 1.5
    newest = max(r.received for r in loaded.reports.values())
    assert loaded.now - newest < 1.0  # the hosts are as fresh as they were when read


@pytest.mark.django_db(transaction=True)
def test_commands_queued_for_a_host_being_fenced_are_dropped(cluster3: Any, store: Store) -> None:
    """Sent before the fence, they must never run after it (the host reboots and its agent is
    back in seconds): the runner empties the host's queue once the fence is decided."""
    cluster, agents = cluster3
    queue = agent_queue("et-virt05")
    store.r.delete(queue)
    try:
        t = run(cluster, agents, store, 1000.0, 1005.0)
        store.r.rpush(queue, '{"a start": "queued before the power loss"}')
        agents.power_off("et-virt05")
        run(cluster, agents, store, t, t + 10)
        assert agents.fenced == ["et-virt05"]
        assert store.r.llen(queue) == 0
    finally:
        store.r.delete(queue)


def test_commands_expire_long_before_an_agent_would_get_them_back(settings: Any) -> None:
    """What a dying agent had taken but not acknowledged comes back after its visibility
    timeout; by then it must have expired, or it would run late (a start after a failover)."""
    from agent.worker import Settings as AgentSettings
    from agent.worker import make_celery

    app = make_celery(AgentSettings(host="h1", broker="redis://127.0.0.1:1/0"))
    agent_visibility = app.conf.broker_transport_options.get("visibility_timeout", 3600)
    assert 0 < settings.HAVEN_COMMAND_TTL_S < agent_visibility
    # and the console's own unacknowledged tasks come back within a minute, not an hour
    assert settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] <= 60


@pytest.mark.django_db(transaction=True)
def test_a_runner_waits_out_the_lock_of_a_holder_that_missed_its_renewals(
    cluster3: Any, store: Store
) -> None:
    """A live holder's lock never has less than two thirds of its ttl left; one with less is
    likely dead: the runner waits for it to expire instead of leaving it to the next beat."""
    cluster, agents = cluster3
    agents.heartbeat(time.time())
    key = f"{store.p}lock:runner:{cluster.pk}"
    store.r.set(key, "a-dead-holder", px=400)
    started = time.monotonic()
    reports = runner.run(cluster.pk, store)
    assert len(reports) == 1
    waited = time.monotonic() - started - reports[0].duration_s  # the tick itself aside
    assert 0.3 < waited < 2.0, waited
    store.r.set(key, "a-live-holder", px=int(LOCK_TTL_S * 1000))
    assert runner.run(cluster.pk, store) == []  # a live one is left alone: a wake instead
    assert store.take_request(f"runner:{cluster.pk}")


@pytest.mark.django_db(transaction=True)
def test_a_decision_whose_write_lock_came_late_is_made_again_under_it(
    cluster3: Any, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine decides before the write transaction opens; when SQLite's write lock is held
    elsewhere for longer than DECIDED_MAX_WAIT_S, that decision is not written: the tick
    decides again inside the transaction, and commits once."""
    from django.db import connection, transaction

    if connection.vendor != "sqlite":
        pytest.skip("the write lock taken at BEGIN is SQLite's (PostgreSQL locks rows)")
    cluster, agents = cluster3
    t = run(cluster, agents, store, 1000.0, 1005.0)
    decided: list[float] = []
    real_tick = engine.tick

    def counted(snap: engine.Snapshot, now: float) -> engine.Decision:
        decided.append(time.monotonic())
        return real_tick(snap, now)

    monkeypatch.setattr(engine, "tick", counted)
    holding, release = threading.Event(), threading.Event()

    def writer_elsewhere() -> None:
        from django.db import connection as own

        try:
            with transaction.atomic():  # BEGIN IMMEDIATE: the write lock, held
                Job.objects.filter(pk=-1).update(kind="x")
                holding.set()
                release.wait(10)
        finally:
            own.close()

    other = threading.Thread(target=writer_elsewhere)
    other.start()
    assert holding.wait(10)
    threading.Timer(runner.DECIDED_MAX_WAIT_S + 0.7, release.set).start()
    ticks_before = EngineState.objects.get(cluster=cluster).ticks
    report = runner.tick_once(cluster.pk, store, now=t + 8)
    other.join(10)
    assert len(decided) == 2  # decided before the lock, then again under it
    assert EngineState.objects.get(cluster=cluster).ticks == ticks_before + 1
    assert report.duration_s >= runner.DECIDED_MAX_WAIT_S  # it did wait for the lock
