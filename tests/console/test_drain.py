"""The ingest drainer on a real Redis, in-process: batches, refusals, no SQL per heartbeat, lag."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import pytest

from agent.protocol import inbound_key
from console.ha.drain import Drainer
from console.ha.store import DRAIN_WAIT_S, Batch, RedisStore
from tests.console import factories as f

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def beat(host: str, seq: int, sent_at: float | None = None) -> str:
    t = time.time()
    return json.dumps(
        {
            "v": 2,
            "kind": "heartbeat",
            "host": host,
            "seq": seq,
            "boot": "b",
            "agent_version": "t",
            "guests": [{"name": "g", "uuid": "", "state": "running"}],
            "ts": t,
            "sent_at": t if sent_at is None else sent_at,
        }
    )


def test_batches_without_a_query_per_heartbeat(
    store: RedisStore, django_assert_num_queries: Any
) -> None:
    cluster = f.ClusterFactory()
    names = [f"d{uuid.uuid4().hex[:6]}-{i}" for i in range(20)]
    for name in names:
        f.HostFactory(cluster=cluster, name=name)
    woken: list[int] = []
    drainer = Drainer(store, run_cluster=lambda cid, s: woken.append(cid), keep_users=False)
    try:
        drainer.keys()  # the host list, loaded once
        last = {}
        for seq in range(1, 6):
            for name in names:
                last[name] = beat(name, seq)
                store.r.rpush(inbound_key(name), last[name])
        with django_assert_num_queries(0):
            assert drainer.round(wait_s=0) == 100
        reports = store.reports(names)
        assert {n: r.heartbeat["seq"] for n, r in reports.items()} == dict.fromkeys(names, 5)
        stored = store.r.hget(f"{store.p}hb", names[0])
        assert stored.endswith(f', "hb": {last[names[0]]}}}')  # as it came, not encoded again
        assert drainer.totals.heartbeats == 100 and woken == []
        status = store.ingest_status()
        assert status.backlog == 0 and status.lag_s < 1.0
    finally:
        drainer.close()
        for name in names:
            store.r.delete(inbound_key(name))


def test_a_body_for_another_host_is_refused_and_logged_once(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = f.ClusterFactory()
    h1, h2 = (f.HostFactory(cluster=cluster, name=f"r{uuid.uuid4().hex[:6]}") for _ in "12")
    stranger = f"nobody-{uuid.uuid4().hex[:6]}"
    drainer = Drainer(store, keep_users=False)
    try:
        for seq in range(5):
            store.r.rpush(inbound_key(h1.name), beat(h2.name, seq))
        store.r.rpush(inbound_key(stranger), beat(stranger, 1))
        drainer._scanned = -float("inf")  # find the stranger's list now
        with caplog.at_level(logging.WARNING, logger="haven.ingest"):
            drainer.round(wait_s=0)
        assert drainer.totals.refused == 6
        assert store.reports([h1.name, h2.name, stranger]) == {}
        lines = [r.getMessage() for r in caplog.records]
        assert lines.count(f"refused a message on {h1.name}'s inbound list: it speaks for host "
                           f"'{h2.name}'") == 1  # fmt: skip
        assert f"refused a message on {stranger}'s inbound list: no such host" in lines
        assert store.r.llen(inbound_key(stranger)) == 0  # emptied
    finally:
        drainer.close()
        for key in (inbound_key(h1.name), inbound_key(stranger)):
            store.r.delete(key)


def test_the_lag_shows_a_backlog_and_a_dead_drainer(store: RedisStore) -> None:
    now = time.time()
    store.record_ingest(at=now, caught_up_at=now - 7.0, backlog=300)
    assert store.ingest_lag(now) == pytest.approx(7.0)
    store.record_ingest(at=now - 5.0, caught_up_at=now - 5.0, backlog=0)  # no report for 5 s
    assert store.ingest_lag(now) == pytest.approx(5.0 - DRAIN_WAIT_S)
    store.record_ingest(at=now, caught_up_at=now, backlog=0)
    assert store.ingest_lag(now) == 0.0
    # the agents' clocks: the median of (received - sent_at) of each host's newest heartbeat
    store.put_batch(Batch(now, heartbeats={"a": json.loads(beat("a", 1, sent_at=now - 2.0))}))
    assert store.ingest_status(now).heartbeat_lag_s == pytest.approx(2.0)


def test_the_drainer_ticks_runners_that_beat_left_alone(store: RedisStore) -> None:
    """Celery beat dead or restarting: the drainer ticks a runner whose last tick is stale."""
    from console.monitoring import ticks

    cluster = f.ClusterFactory()
    woken: list[int] = []
    drainer = Drainer(store, run_cluster=lambda cid, s: woken.append(cid), keep_users=False)
    try:

        def check() -> list[int]:
            drainer._backup_checked = -float("inf")
            woken.clear()
            drainer._backup_ticks()
            drainer._pool.submit(lambda: None).result()  # the wakes ran
            time.sleep(0.05)
            return list(woken)

        assert check() == [cluster.pk]  # never ticked
        ticks.record_tick(store, cluster.pk, 0.01)  # beat just ticked it
        assert check() == []
        store.r.set(f"{store.p}ticked:{cluster.pk}", f"{time.time() - 3.0:.3f}")
        assert check() == [cluster.pk]  # 3 s without a tick: the drainer steps in
        assert drainer.totals.backup_ticks == 2
    finally:
        drainer.close()


def test_a_wake_goes_to_the_workers_not_a_thread_of_the_drainer(store: RedisStore) -> None:
    """A crash event wakes its cluster's runner through a task for the console's workers (a
    tick in the drainer's own threads held the GIL from the drain loop); a wake that cannot be
    sent is ticked in the drainer."""
    import base64

    from console.celery import app, use_broker

    cluster = f.ClusterFactory()
    host = f.HostFactory(cluster=cluster, name=f"w{uuid.uuid4().hex[:6]}")
    crashed = {"v": 2, "kind": "event", "event": "lifecycle", "host": host.name, "guest": "g",
               "uuid": "", "state": "crashed", "detail": "", "seq": 2, "ts": 1.0,
               "sent_at": 1.0}  # fmt: skip
    ticked: list[int] = []
    drainer = Drainer(store, run_cluster=lambda cid, s: ticked.append(cid), keep_users=False)
    previous = app.conf.broker_url
    url = store.r.connection_pool.connection_kwargs
    use_broker(f"redis://{url['host']}:{url['port']}/15")  # a queue of this test's own
    r15 = store.r.client()
    r15.select(15)
    try:
        r15.delete("console")
        store.r.rpush(inbound_key(host.name), json.dumps(crashed))
        assert drainer.round(wait_s=0) == 1
        queued = [json.loads(raw) for raw in r15.lrange("console", 0, -1)]
        assert [m["headers"]["task"] for m in queued] == ["haven.console.wake"]
        args, _kwargs, _embed = json.loads(base64.b64decode(queued[0]["body"]))
        assert args == [cluster.pk] and queued[0]["headers"]["expires"]
        drainer._pool.submit(lambda: None).result()
        assert ticked == [] and drainer.totals.wakes == 1

        def refused(cluster_id: int) -> None:
            raise ConnectionRefusedError(111, "Connection refused")

        drainer._send_wake = refused
        store.r.rpush(inbound_key(host.name), json.dumps({**crashed, "seq": 3}))
        drainer.round(wait_s=0)
        drainer._pool.submit(lambda: None).result()
        time.sleep(0.05)
        assert ticked == [cluster.pk]
    finally:
        r15.delete("console")
        use_broker(previous)
        drainer.close()
        store.r.delete(inbound_key(host.name))
