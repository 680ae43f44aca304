"""What the runner keeps between ticks (console/ha/snapshot.py): the configuration, read
again only when it changed, and the engine's status, stored in pieces and read back the same
whichever process reads it."""

from __future__ import annotations

import dataclasses
import gc
import json
from typing import Any

import pytest

from console.ha import snapshot
from console.ha.models import EngineServiceStatus, EngineState
from console.ha.store import Store
from console.services.models import VmService
from tests.console import factories as f
from tests.console.test_runtime import run

pytestmark = pytest.mark.redis


def _status(cluster: Any, store: Store, now: float) -> Any:
    return snapshot.load(cluster, store, now).snapshot.status


@pytest.mark.django_db(transaction=True)
def test_the_status_is_stored_in_pieces_and_read_back_the_same(cluster3: Any, store: Store) -> None:
    cluster, agents = cluster3
    t = run(cluster, agents, store, 1000.0, 1006.0)
    state = EngineState.objects.get(cluster=cluster)
    assert json.loads(state.status_json)["services"] == {}  # the header holds no service
    rows = dict(EngineServiceStatus.objects.values_list("name", "tick"))
    assert set(rows) == set(VmService.objects.values_list("name", flat=True))
    kept = snapshot._statuses[cluster.pk]
    assert kept[0] == state.ticks
    snapshot.forget()  # another process: everything from the database
    assert _status(cluster, store, t) == kept[1]
    # a settled tick rewrites no piece
    before = dict(EngineServiceStatus.objects.values_list("name", "tick"))
    t = run(cluster, agents, store, t, t)
    assert dict(EngineServiceStatus.objects.values_list("name", "tick")) == before
    # a guest crashes: only its piece is rewritten, and a process that held the status of an
    # earlier tick reads the rows written since and sees what one reading everything sees
    older = snapshot._statuses[cluster.pk]
    victim = sorted(agents.running["et-virt05"])[0]
    agents.running["et-virt05"].discard(victim)
    t = run(cluster, agents, store, t, t + 1)
    after = dict(EngineServiceStatus.objects.values_list("name", "tick"))
    assert {n for n in after if after[n] != before[n]} == {victim}
    newest = snapshot._statuses[cluster.pk][1]
    snapshot.forget()
    snapshot._statuses[cluster.pk] = older
    assert snapshot._status(EngineState.objects.get(cluster=cluster), older)[0] == newest
    snapshot.forget()
    assert _status(cluster, store, t) == newest


@pytest.mark.django_db(transaction=True)
def test_a_configuration_change_reaches_the_next_tick(cluster3: Any, store: Store) -> None:
    cluster, agents = cluster3
    t = run(cluster, agents, store, 1000.0, 1003.0)
    version = EngineState.objects.get(cluster=cluster).config_version
    service = VmService.objects.get(name="guest1")
    service.priority = 7
    service.save()  # through a signal, in the writer's transaction
    assert EngineState.objects.get(cluster=cluster).config_version == version + 1
    assert snapshot.load(cluster, store, t, cached=True).snapshot.services["guest1"].priority == 7
    # a bulk create sends no signal: the services' count tells
    VmService.objects.bulk_create(
        [VmService(cluster=cluster, name="bulk1", domain_xml="<domain/>", memory_mb=64)]
    )
    assert "bulk1" in snapshot.load(cluster, store, t, cached=True).snapshot.services
    # kept as it is while nothing changed: the same objects
    first = snapshot.load(cluster, store, t, cached=True)
    again = snapshot.load(cluster, store, t, cached=True)
    assert first.snapshot.services["guest1"] is again.snapshot.services["guest1"]
    assert not again.fresh
    # a new failover domain member is configuration too
    domain = f.FailoverDomainFactory(cluster=cluster)
    assert domain.name in snapshot.load(cluster, store, t, cached=True).snapshot.domains


@pytest.mark.django_db(transaction=True)
def test_with_a_clustered_vg_a_host_without_corosync_is_not_in_the_shared_storage(
    cluster3: Any, store: Store
) -> None:
    cluster, agents = cluster3
    t = 1000.0

    def in_storage() -> dict[str, bool]:
        hosts = snapshot.load(cluster, store, t).snapshot.hosts
        return {name: h.shared_storage for name, h in hosts.items()}

    corosync = {"running": True, "quorate": True, "nodes": [{"nodeid": 1, "name": "et-virt05"}]}
    stopped = {"running": False, "quorate": False, "nodes": [], "error": "Cannot initialize"}
    for host, stack in (("et-virt05", corosync), ("et-virt06", None), ("et-virt07", stopped)):
        beat = dataclasses.replace(agents.heartbeat_of(host, t), cluster=stack)
        agents.deliver(host, beat.to_dict(), t)
    assert in_storage() == dict.fromkeys(("et-virt05", "et-virt06", "et-virt07"), False)
    f.VolumeGroupFactory(cluster=cluster, name="vg_shared", clustered=True)
    # in: corosync answers; installed but not answering (stopped or hung, the agent cannot
    # tell which); out: not installed (a silent et-virt06 with no guest just goes offline)
    assert in_storage() == {"et-virt05": True, "et-virt06": False, "et-virt07": True}
    store.forget_host("et-virt05")  # not heard from at all (Redis lost it): in, to be safe
    assert in_storage()["et-virt05"] is True


@pytest.mark.django_db(transaction=True)
def test_a_slow_tick_is_logged_with_where_its_time_went(
    cluster3: Any, store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from console.ha import runner

    cluster, agents = cluster3
    t = run(cluster, agents, store, 1000.0, 1002.0)
    snapshot.forget()  # the next tick reads its configuration again
    monkeypatch.setattr(runner, "SLOW_TICK_S", 0.0)
    agents.heartbeat(t)
    decide = runner.engine.tick

    def collecting(*args: Any) -> Any:  # the garbage collector runs during the tick
        gc.collect()
        return decide(*args)

    monkeypatch.setattr(runner.engine, "tick", collecting)
    with caplog.at_level("INFO", logger="haven.runner"):
        report = runner.tick_once(cluster.pk, store, now=t)
    monkeypatch.setattr(runner.engine, "tick", decide)
    assert 0 < report.gc_s < report.duration_s
    assert set(report.phases) == {"load", "engine", "write"}
    assert all(cpu >= 0 for cpu in report.phases.values()) and report.config_read
    assert sum(report.phases.values()) <= report.cpu_s + 1e-3
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("slow tick")]
    assert f"cluster {cluster.name} " in line and "configuration read" in line
    assert "load " in line and "engine " in line and "write " in line
    assert "garbage collector " in line
    monkeypatch.setattr(runner, "SLOW_TICK_S", 3600.0)  # a quick tick says nothing
    caplog.clear()
    with caplog.at_level("INFO", logger="haven.runner"):
        assert not runner.tick_once(cluster.pk, store, now=t + 1).config_read
    assert not [r for r in caplog.records if r.getMessage().startswith("slow tick")]


@pytest.mark.django_db(transaction=True)
def test_a_write_no_signal_sees_is_read_within_the_max_age_a_slice_a_tick(
    cluster3: Any, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, agents = cluster3
    t = run(cluster, agents, store, 1000.0, 1003.0)
    clock = [5000.0]
    monkeypatch.setattr(snapshot, "monotonic", lambda: clock[0])
    snapshot.forget()
    whole = snapshot.load(cluster, store, t, cached=True)  # read whole at 5000
    for _ in range(20):  # an unchanged row read again keeps its kept object
        clock[0] += snapshot.CONFIG_MAX_AGE_S / 20
        again = snapshot.load(cluster, store, t, cached=True)
    assert all(again.services[n] is s for n, s in whole.services.items())
    names = sorted(VmService.objects.values_list("name", flat=True))
    VmService.objects.filter(name__in=names).update(priority=9)  # no signal, no version
    VmService.objects.filter(name="guest2").update(name="guest2b")  # renamed behind its back
    domain = f.FailoverDomainFactory.build(cluster=cluster)
    type(domain).objects.bulk_create([domain])  # a domain, also without a signal
    seen: list[int] = []
    for _ in range(20):  # ticks 3 s apart: 20 of them make the max age
        clock[0] += snapshot.CONFIG_MAX_AGE_S / 20
        loaded = snapshot.load(cluster, store, t, cached=True)
        assert not loaded.fresh  # never read whole
        services = loaded.snapshot.services
        seen.append(sum(c.priority == 9 for c in services.values()))
        assert "guest2" not in services or "guest2b" not in services  # never both
    # a slice each tick, not all at once; after the max age every row and the domain read again
    assert seen[0] < len(names) and seen == sorted(seen)
    assert set(services) == (set(names) - {"guest2"}) | {"guest2b"}
    assert all(c.priority == 9 for c in services.values())
    assert domain.name in loaded.snapshot.domains


@pytest.mark.django_db(transaction=True)
def test_a_large_configuration_read_whole_is_frozen_and_what_died_since_is_collected(
    cluster3: Any, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weakref

    from console.ha import runner

    class Cycle:
        me: Any

    cluster, agents = cluster3
    t = run(cluster, agents, store, 1000.0, 1002.0)
    monkeypatch.setattr(snapshot, "HEAP_FREEZE_FROM", 1)  # three services make it large here
    try:
        garbage = Cycle()
        garbage.me = garbage  # a cycle: only the garbage collector frees it
        dead = weakref.ref(garbage)
        snapshot.forget()
        agents.heartbeat(t)
        runner.tick_once(cluster.pk, store, now=t)  # read whole: frozen after the tick
        frozen = gc.get_freeze_count()
        assert frozen > 0 and dead() is not None  # alive when frozen: frozen with the rest
        del garbage
        gc.collect()
        assert dead() is not None  # a frozen cycle is not collected...
        runner.tick_once(cluster.pk, store, now=t + 1)  # kept: no collection, no freeze
        assert dead() is not None
        snapshot.forget()
        runner.tick_once(cluster.pk, store, now=t + 2)  # read whole again
        assert dead() is None  # ...until the next whole read collects before freezing
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
