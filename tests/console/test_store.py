"""The `Store` port: the same contract checked on both implementations (Redis and in-memory).

Each test runs twice, once on a `RedisStore` on the test's Redis (skipped without one) and once
on a `MemoryStore`; both are driven by the same virtual clock.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from console.ha.store import DRAIN_WAIT_S, Batch, LockLost, MemoryStore, Store
from tests.stores import redis_store


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["redis", "memory"])
def clocked(request: pytest.FixtureRequest) -> Iterator[tuple[Store, Clock]]:
    clock = Clock()
    if request.param == "memory":
        yield MemoryStore(clock=clock), clock
        return
    with redis_store(clock=clock) as store:
        yield store, clock


def beat(host: str, *guests: str, sent_at: float = 0.0) -> dict[str, object]:
    return {
        "v": 2,
        "kind": "heartbeat",
        "host": host,
        "sent_at": sent_at,
        "guests": [{"name": g, "uuid": "", "state": "running"} for g in guests],
    }


def test_newer_lifecycle_events_are_applied_on_top_of_the_heartbeat(
    clocked: tuple[Store, Clock],
) -> None:
    store, _ = clocked
    store.put_batch(Batch(100.0, heartbeats={"h1": beat("h1", "a", "b")}))
    store.put_lifecycle("h1", "a", "crashed", 100.5)  # after the beat: a is gone
    store.put_lifecycle("h1", "c", "started", 100.5)  # after the beat: c runs
    store.put_lifecycle("h1", "b", "stopped", 99.0)  # older than the beat: outdated by it
    [report] = store.reports(["h1", "nobody"]).values()
    assert (report.host, report.received) == ("h1", 100.0)
    assert report.running == {"b", "c"}
    assert store.view(["h1", "nobody"])[0] == {"h1": report}  # the runner's read: the same
    store.put_heartbeat("h1", beat("h1", "a"), 101.0)  # a newer beat outdates every event
    assert store.reports(["h1"])["h1"].running == {"a"}
    store.forget_host("h1")
    assert store.reports(["h1"]) == {}


def test_health_failures_from_heartbeats_and_newer_events_until_a_fresh_start(
    clocked: tuple[Store, Clock],
) -> None:
    store, _ = clocked
    hb = {**beat("h1", "a", "b"), "unhealthy": {"a": {"check": "probe", "detail": "refused"}}}
    store.put_batch(Batch(100.0, heartbeats={"h1": hb}))
    store.put_batch(Batch(100.5, health=[("h1", "b", "watchdog", "action none")]))
    store.put_batch(Batch(99.0, health=[("h1", "c", "panic", "old")]))  # older than the beat
    report = store.reports(["h1"])["h1"]
    assert report.unhealthy == {"a": ("probe", "refused"), "b": ("watchdog", "action none")}
    viewed, _ = store.view(["h1"])  # the runner's one round trip reads the same
    assert viewed["h1"].unhealthy == report.unhealthy and viewed["h1"].running == report.running
    store.put_lifecycle("h1", "b", "started", 101.0)  # restarted after the event: a fresh run
    assert "b" not in store.reports(["h1"])["h1"].unhealthy
    store.put_heartbeat("h1", beat("h1", "a", "b"), 102.0)  # the agent no longer reports any
    assert store.reports(["h1"])["h1"].unhealthy == {}
    store.forget_host("h1")
    assert store.reports(["h1"]) == {}


def test_lifecycle_and_health_events_of_one_guest_are_kept_apart(
    clocked: tuple[Store, Clock],
) -> None:
    """Both kinds of a host's events share one hash (one read a host a tick): a guest whose
    name looks like the other kind's field is not mistaken for it."""
    store, _ = clocked
    store.put_batch(Batch(100.0, heartbeats={"h1": beat("h1", "life:x", "health")}))
    store.put_batch(
        Batch(
            100.5, lifecycle=[("h1", "life:x", "crashed")], health=[("h1", "health", "probe", "no")]
        )
    )
    report = store.reports(["h1"])["h1"]
    assert report.running == {"health"} and report.unhealthy == {"health": ("probe", "no")}


def test_memberships_are_read_without_the_heartbeats(clocked: tuple[Store, Clock]) -> None:
    store, _ = clocked
    stack = {"quorate": True, "node_id": 1, "members": ["h1", "h2"]}
    store.put_batch(
        Batch(100.0, heartbeats={"h1": {**beat("h1"), "cluster": stack}, "h2": beat("h2")})
    )
    assert store.memberships(["h1", "h2", "nobody"]) == {"h1": stack, "h2": None}
    assert store.memberships(["h1"])["h1"] == store.reports(["h1"])["h1"].beat.cluster
    store.forget_host("h1")
    assert store.memberships(["h1", "h2"]) == {"h2": None}


def test_ingest_status_on_the_stores_clock(clocked: tuple[Store, Clock]) -> None:
    store, clock = clocked
    assert store.ingest_status().reported_at is None
    assert store.ingest_lag() == 0.0
    store.record_ingest(at=clock.t, caught_up_at=clock.t - 7.0, backlog=300)
    assert store.ingest_lag() == pytest.approx(7.0)  # no `now`: the store's clock
    clock.t += 5.0
    store.record_ingest(at=clock.t - 5.0, caught_up_at=clock.t - 5.0, backlog=0)
    assert store.ingest_lag() == pytest.approx(5.0 - DRAIN_WAIT_S)
    store.put_heartbeat("h1", beat("h1", sent_at=clock.t - 2.0), clock.t)
    status = store.ingest_status(clock.t)
    assert status.heartbeat_lag_s == pytest.approx(2.0)
    assert status.backlog == 0 and status.reported_at == clock.t - 5.0


def test_one_lock_holder_and_wakes_that_are_kept(clocked: tuple[Store, Clock]) -> None:
    store, _ = clocked
    with store.lock("runner:1") as lease:
        assert lease and lease.held
        with store.lock("runner:1") as other:
            assert not other and not other.held
            with pytest.raises(LockLost):
                other.check()
        lease.check()
        assert 0.0 < (store.lock_left_s("runner:1") or 0.0) <= 3.0
    assert store.lock_left_s("runner:1") == 0.0  # released
    assert not store.take_request("runner:1")
    store.request("runner:1")
    assert store.take_request("runner:1")
    assert not store.take_request("runner:1")  # taken once


def test_the_view_starts_at_the_first_look_and_stays(clocked: tuple[Store, Clock]) -> None:
    store, _ = clocked
    assert store.view_since(100.0) == 100.0
    assert store.view_since(160.0) == 100.0


def test_tick_times_and_changes(clocked: tuple[Store, Clock]) -> None:
    store, clock = clocked
    assert store.last_ticks([7]) == {7: None}
    store.record_tick(7, 0.25, clock.t)
    store.record_tick(7, 0.5, clock.t + 1)
    assert store.recent_ticks(7) == [0.5, 0.25]  # newest first
    assert store.last_ticks([7, 8]) == {7: pytest.approx(clock.t + 1), 8: None}
    store.publish_change(7)  # best effort, never raises


def test_a_memory_lock_expires_when_its_holder_stops_renewing() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    with store.lock("runner:1", ttl_s=3.0, max_hold_s=60.0) as lease:
        clock.t += 30.0  # a long tick: renewed all along, as RedisLease's thread does
        assert lease.held and store.lock_left_s("runner:1") == pytest.approx(3.0)
        lease.stop_renewing()  # the holder hangs
        clock.t += 3.0
        assert not lease.held
        with pytest.raises(LockLost):
            lease.check()
        with store.lock("runner:1") as other:
            assert other  # another runner gets in
    with store.lock("runner:2", ttl_s=3.0, max_hold_s=10.0) as lease:
        clock.t += 11.0  # held past its limit: no longer renewed
        assert not lease.held


def test_a_memory_store_restart_loses_the_view_and_drops_reach_the_transport() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    store.put_heartbeat("h1", beat("h1", "a"), 100.0)
    assert store.view_since(100.0) == 100.0
    store.restart()
    assert store.reports(["h1"]) == {}
    assert store.view_since(150.0) == 150.0  # afresh: no data is not silence
    dropped: list[str] = []
    store.on_drop = dropped.append
    store.drop_commands("h2")
    assert dropped == ["h2"] == store.dropped


def test_a_heartbeat_is_decoded_once_and_a_bad_value_is_not_believed() -> None:
    from console.ha.store import decode_heartbeat

    beat = decode_heartbeat(
        "h1",
        {
            "host": "someone-else",
            "memory_total_mib": 4096,
            "memory_free_mib": -12,  # no agent reports this: not believed
            "cpus": True,  # not a count
            "agent_version": "1.2",
            "guests": [{"name": "a", "uuid": "u", "state": "running"}],
            "sent_at": 99.5,
        },
    )
    assert beat.host == "h1"  # the sender, whatever the body says
    assert (beat.memory_total_mib, beat.memory_free_mib, beat.cpus) == (4096, None, None)
    assert [g.name for g in beat.guests or []] == ["a"] and beat.sent_at == 99.5
    assert decode_heartbeat("h1", {"memory_free_mib": 0}).memory_free_mib == 0  # 0 is 0
    assert decode_heartbeat("h1", {"guests": None}).guests is None  # libvirt unreachable
    mounts = decode_heartbeat("h1", {"shared_mounts": ["/guest_roots"]}).shared_mounts
    assert mounts == ["/guest_roots"]
    assert decode_heartbeat("h1", {"shared_mounts": [7]}).shared_mounts is None  # not believed
    assert decode_heartbeat("h1", {}).shared_mounts is None  # not said


def test_a_guest_list_like_the_last_one_is_not_decoded_again() -> None:
    """Each host's last decoded guest list is reused while its heartbeats report the same
    list; any change (a guest gone, a state, another host) is decoded afresh."""
    from console.ha.store import overlay

    def guests(*states: tuple[str, str]) -> list[dict[str, str]]:
        return [{"name": n, "uuid": "", "state": s} for n, s in states]

    first = overlay("k1", 10.0, {"guests": guests(("a", "running"), ("b", "running"))}, {})
    again = overlay("k1", 11.0, {"guests": guests(("a", "running"), ("b", "running"))}, {})
    assert again.running == {"a", "b"} and again.running is first.running  # not decoded again
    assert again.beat.guests is first.beat.guests
    paused = overlay("k1", 12.0, {"guests": guests(("a", "running"), ("b", "paused"))}, {})
    assert [g.state for g in paused.beat.guests or []] == ["running", "paused"]
    gone = overlay("k1", 13.0, {"guests": guests(("a", "running"))}, {"a": ("crashed", 14.0)})
    assert gone.running == frozenset()  # the event newer than the beat, on a copy
    assert overlay("k1", 15.0, {"guests": guests(("a", "running"))}, {}).running == {"a"}
    other = overlay("k2", 16.0, {"guests": guests(("c", "running"))}, {})
    assert other.running == {"c"}
