"""The cluster page's policy panel is computed once per engine tick and served kept, saying
which tick it is for and how old it is (console/ha/panel.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from console.ha import panel, rules, runner
from console.ha.store import MemoryStore
from tests.console import factories as f
from tests.console.conftest import LiveView
from tests.console.views_support import login, text


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def world(db: None) -> Iterator[dict[str, Any]]:
    """Two 8 GiB hosts with a 4 GiB guest each, heartbeating into a store on a clock of the
    test's own; the rulebook reads them."""
    clock = Clock()
    store = MemoryStore(clock=clock)
    cluster = f.ClusterFactory(name="panel")
    a, b = f.half_full_hosts(cluster)
    view = LiveView(store)
    view.beat(a, b, at=clock.t)
    with rules.use(store=store, clock=clock):
        yield {"cluster": cluster, "a": a, "b": b, "store": store, "clock": clock, "view": view}


@pytest.fixture
def computed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The clusters whose policy the engine was asked for, in order."""
    calls: list[int] = []
    real = rules.policy_at

    def spy(cluster: Any) -> Any:
        calls.append(cluster.pk)
        return real(cluster)

    monkeypatch.setattr(rules, "policy_at", spy)
    return calls


def test_the_page_serves_the_kept_panel_with_its_tick_and_age(
    world: dict[str, Any], computed: list[int]
) -> None:
    cluster, clock = world["cluster"], world["clock"]
    client = login("viewer", "page-viewer")
    page = text(client.get(f"/clusters/{cluster.pk}/"))
    assert "survives 1 host failure; 0.0 GiB spare" in page
    assert "As of the engine's tick 0, computed 0.0 s ago." in page
    assert computed == [cluster.pk]
    clock.t += 2.5
    page = text(client.get(f"/clusters/{cluster.pk}/"))
    assert "As of the engine's tick 0, computed 2.5 s ago." in page
    assert computed == [cluster.pk]  # served kept: the engine was not asked again
    api = client.get(f"/api/clusters/{cluster.pk}/policy/").json()
    assert (api["tick"], api["age_s"], api["ticks_behind"], api["stale"]) == (0, 2.5, 0, False)
    assert api["failover"]["summary"] == "survives 1 host failure; 0.0 GiB spare"
    assert computed == [cluster.pk]


def test_after_a_tick_the_watched_panel_is_computed_again_once(
    world: dict[str, Any], computed: list[int]
) -> None:
    cluster, clock, store = world["cluster"], world["clock"], world["store"]
    client = login("viewer", "page-viewer")
    client.get(f"/clusters/{cluster.pk}/")  # computed, and now watched
    assert computed == [cluster.pk]
    # the live picture changes without a configuration change: h2 reports its guest gone
    # (its memory free), which the engine hears at its next tick
    world["view"].beat(world["a"], at=clock.t)
    store.put_heartbeat(
        "h2",
        {"v": 2, "kind": "heartbeat", "host": "h2", "memory_total_mib": 8192,
         "memory_free_mib": 8192, "cpus": 4, "guests": []},
        clock.t,
    )  # fmt: skip
    clock.t += 1.0
    runner.tick_once(cluster.pk, store, now=clock.t)
    clock.t += 6.0
    page = text(client.get(f"/clusters/{cluster.pk}/"))
    # behind by a tick and older than STALE_S: it says so, it does not pass for new
    assert "As of the engine's tick 0, computed 7.0 s ago; the engine has ticked 1 time" in page
    assert "nobody refreshed it" in page
    assert computed == [cluster.pk]
    assert panel.refresh_watched(store) == [cluster.pk]
    assert panel.refresh_watched(store) == []  # once per tick
    assert computed == [cluster.pk, cluster.pk]
    page = text(client.get(f"/clusters/{cluster.pk}/"))
    assert "As of the engine's tick 1, computed 0.0 s ago." in page
    assert "nobody refreshed it" not in page
    api = client.get(f"/api/clusters/{cluster.pk}/policy/").json()
    # the engine's answer on the new picture (it lost big2's memory on h2: short now)
    assert api["tick"] == 1 and api["failover"] == rules.policy(cluster).as_dict()["failover"]
    assert api["failover"]["summary"].startswith("does not survive 1 host failure"), api


def test_an_unwatched_panel_is_not_refreshed(world: dict[str, Any], computed: list[int]) -> None:
    cluster, clock, store = world["cluster"], world["clock"], world["store"]
    panel.compute(cluster)  # kept, but no page read it
    clock.t += 1.0
    runner.tick_once(cluster.pk, store, now=clock.t)
    assert panel.refresh_watched(store) == []
    login("viewer", "page-viewer").get(f"/clusters/{cluster.pk}/")
    clock.t += panel.WATCH_S + 1
    runner.tick_once(cluster.pk, store, now=clock.t)
    assert panel.refresh_watched(store) == []  # nobody looked for a minute
    assert computed == [cluster.pk]


def test_a_costly_panel_is_refreshed_no_sooner_than_ten_times_its_cost(
    world: dict[str, Any], computed: list[int]
) -> None:
    """At 10,000 guests a panel costs ~330 ms of CPU: computed after every tick while a page is
    open, it took a third of a core from the HA loop. It waits ``COST_FACTOR`` times its cost
    (never more than ``REFRESH_MAX_S``), and says its tick and age meanwhile."""
    cluster, clock, store = world["cluster"], world["clock"], world["store"]
    client = login("viewer", "page-viewer")
    client.get(f"/clusters/{cluster.pk}/")  # computed, and now watched
    kept = panel.Panel.from_json(store.get_panel(cluster.pk))
    assert kept is not None and 0 < kept.cost_s < 0.25  # its CPU time, kept with it
    costly = replace(kept, cost_s=0.2)  # as if it had cost 200 ms: wait 2 s
    store.put_panel(cluster.pk, costly.to_json())
    clock.t += 1.0
    runner.tick_once(cluster.pk, store, now=clock.t)
    assert panel.refresh_watched(store) == []  # 1 s old: too soon after a 200-ms panel
    clock.t += 1.1
    assert panel.refresh_watched(store) == [cluster.pk]  # 2.1 s: its turn
    assert computed == [cluster.pk, cluster.pk]
    slowest = replace(panel.Panel.from_json(store.get_panel(cluster.pk)), cost_s=60.0)
    store.put_panel(cluster.pk, slowest.to_json())
    clock.t += 1.0
    runner.tick_once(cluster.pk, store, now=clock.t)
    clock.t += panel.REFRESH_MAX_S - 1.0
    assert panel.refresh_watched(store) == [cluster.pk]  # bounded: never staler than that
    api = client.get(f"/api/clusters/{cluster.pk}/policy/").json()
    assert (api["tick"], api["ticks_behind"], api["stale"]) == (2, 0, False)


def test_a_changed_policy_or_configuration_is_computed_at_once(
    world: dict[str, Any], computed: list[int]
) -> None:
    cluster = world["cluster"]
    client = login("admin", "page-admin")
    client.get(f"/clusters/{cluster.pk}/")
    ok = client.post(
        f"/clusters/{cluster.pk}/policy/",
        {"cpu_overcommit": "4", "host_failures_to_tolerate": "0"},
    )
    assert ok.status_code == 302
    page = text(client.get(f"/clusters/{cluster.pk}/"))
    assert "admission control off; " in page
    f.VmServiceFactory(cluster=cluster, name="new", state="stopped", desired_state="stopped")
    client.get(f"/clusters/{cluster.pk}/")
    assert computed == [cluster.pk] * 3


def test_the_beat_refreshes_the_watched_panel_after_its_ticks(
    world: dict[str, Any], computed: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from console.ha import tasks

    cluster, clock, store = world["cluster"], world["clock"], world["store"]
    monkeypatch.setattr(tasks, "_store", store)
    client = login("viewer", "page-viewer")
    client.get(f"/clusters/{cluster.pk}/")
    clock.t += 1.0
    tasks.tick()  # the beat's task: the runner ticks, then the watched panel is computed again
    assert computed == [cluster.pk, cluster.pk]
    page = text(client.get(f"/clusters/{cluster.pk}/"))
    assert "As of the engine's tick 1, computed 0.0 s ago." in page
