"""The live rebalancer: its planner over random clusters (convergence, no oscillation, one
move per guest) and the engine driving it in the simulator (cool-down, moves in flight)."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from console.engine import HostObservation, Rulebook, Snapshot
from console.engine.rebalance import HostLoad, Movable, Stance, plan, spread
from console.engine.sim import failures, parse, simulate

SPREAD, GAIN = 0.2, 0.05


@st.composite
def clusters(draw: st.DrawFn) -> tuple[dict[str, HostLoad], list[Movable]]:
    names = [f"h{i}" for i in range(draw(st.integers(2, 8)))]
    caps = {h: draw(st.sampled_from([8192, 16384, 32768])) for h in names}
    vcpus = {h: draw(st.sampled_from([None, 8, 32])) for h in names}
    split = draw(st.integers(1, len(names)))
    tiers = [frozenset(names[:split]), frozenset(names[split:])]
    used = dict.fromkeys(names, 0)
    cpu = dict.fromkeys(names, 0)
    guests: list[Movable] = []
    for i in range(draw(st.integers(0, 40))):
        host = draw(st.sampled_from(names))
        mem = draw(st.sampled_from([512, 1024, 2048, 4096]))
        cpus = draw(st.sampled_from([1, 2, 4]))
        if used[host] + mem > caps[host]:
            continue
        used[host] += mem
        cpu[host] += cpus
        tier = next(t for t in tiers if host in t)
        if draw(st.booleans()) and len(tier) > 1:  # some guests cannot move (pinned, cooling)
            guests.append(Movable(f"g{i}", host, mem, cpus, draw(st.integers(0, 3)), tier))
    hosts = {h: HostLoad(h, caps[h], used[h], vcpus[h], cpu[h]) for h in names}
    return hosts, guests


def _apply(
    hosts: dict[str, HostLoad], guests: list[Movable], moves: list[Any]
) -> tuple[dict[str, HostLoad], list[Movable]]:
    by_name = {g.name: g for g in guests}
    used = {h: x.mem_used for h, x in hosts.items()}
    cpu = {h: x.vcpu_used for h, x in hosts.items()}
    for m in moves:
        g = by_name[m.service]
        assert g.host == m.source and m.target in g.tier and m.target != m.source
        used[m.source] -= g.memory_mb
        used[m.target] += g.memory_mb
        cpu[m.source] -= g.cpus
        cpu[m.target] += g.cpus
        assert used[m.target] <= hosts[m.target].mem_cap  # never past memory ...
        limit = hosts[m.target].vcpu_cap
        assert limit is None or cpu[m.target] <= limit  # ... nor past the vCPU limit
    after = {h: HostLoad(h, x.mem_cap, used[h], x.vcpu_cap, cpu[h]) for h, x in hosts.items()}
    moved = {m.service for m in moves}
    # the moved guests are cooling down: no longer movable
    return after, [g for g in guests if g.name not in moved]


def _potential(hosts: dict[str, HostLoad]) -> float:
    return sum(x.mem_used**2 / x.mem_cap for x in hosts.values())


@settings(max_examples=400, deadline=None)
@given(clusters())
def test_after_the_plan_no_further_move_is_proposed(
    cluster: tuple[dict[str, HostLoad], list[Movable]],
) -> None:
    hosts, guests = cluster
    moves = plan(hosts, guests, spread_limit=SPREAD, min_gain=GAIN)
    assert len({m.service for m in moves}) == len(moves)  # no guest moves twice
    assert all(m.gain >= GAIN for m in moves)
    after, cooling = _apply(hosts, guests, moves)
    assert plan(after, cooling, spread_limit=SPREAD, min_gain=GAIN) == []
    # it never goes round in circles: every move lowers sum(used^2 / capacity)
    state, before = dict(hosts), _potential(hosts)
    for m in moves:
        state, _ = _apply(state, guests, [m])
        now = _potential(state)
        assert now < before
        before = now
    assert spread(after) <= spread(hosts) or not moves or spread(after) <= SPREAD + 1
    # a limit gives the plan's first moves
    assert plan(hosts, guests, spread_limit=SPREAD, min_gain=GAIN, limit=2) == moves[:2]


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(2, 4))
    nodes = [
        {"name": f"n{i}", "memory_mb": draw(st.sampled_from([8192, 16384])), "cpus": 4}
        for i in range(1, n + 1)
    ]
    late = draw(st.sampled_from([None, *[x["name"] for x in nodes[1:]]]))
    if late is not None:  # an empty host that joins later
        next(x for x in nodes if x["name"] == late)["power"] = "off"
    services = [
        {
            "name": f"s{i}",
            "desired": "started",
            "node": "n1" if draw(st.booleans()) else draw(st.sampled_from(nodes))["name"],
            "memory_mb": draw(st.sampled_from([512, 1024, 2048])),
            "priority": draw(st.integers(0, 2)),
        }
        for i in range(draw(st.integers(1, 8)))
    ]
    for svc in services:  # guests start only on powered hosts, within their memory
        if svc["node"] == late:
            svc["node"] = "n1"
    events = [{"t": 5, "do": "power_on", "node": late}] if late else []
    return {
        "name": "random-rebalance",
        "settings": {
            "rebalance": True,
            "rebalance_hold_s": draw(st.sampled_from([0, 10])),
            "rebalance_max_moves": draw(st.integers(1, 3)),
            "rebalance_cooldown_s": 100,
            "host_failures_to_tolerate": 0,
        },
        "nodes": nodes,
        "services": services,
        "events": events,
        "until": 300,
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_the_engine_converges_and_moves_no_guest_twice_within_the_cool_down(
    raw: dict[str, Any],
) -> None:
    sc = parse(raw)
    trace = simulate(sc)
    assert failures(sc, trace) == []  # the safety invariants, as for every history
    moves: dict[str, list[float]] = defaultdict(list)
    for t, label in trace.trace:
        if label.startswith("migrate:") and "->" in label:
            moves[label.split(":")[1]].append(t)
    for times in moves.values():
        assert all(b - a >= 100 for a, b in itertools.pairwise(times)), times
    # at the end nothing more is proposed
    t = sc.until
    obs = {
        n: HostObservation(
            n,
            t if h.reachable else None,
            frozenset(h.guests),
            h.spec.memory_mb,
            h.spec.memory_mb - sum(sc.services[g].memory_mb for g in h.guests),
            h.spec.cpus,
        )
        for n, h in trace.hosts.items()
    }
    snap = Snapshot(obs, sc.services, sc.domains, status=trace.status, settings=sc.settings)
    outlook = Rulebook(snap, t).rebalance()
    assert outlook.stance in (Stance.BALANCED, Stance.STUCK), outlook
    assert outlook.moves == ()


def test_paused_in_maintenance_and_incidents_off_unless_enabled() -> None:
    from dataclasses import replace

    from console.engine import ServiceConfig, Settings, tick

    on = Settings(rebalance=True, rebalance_hold_s=0.0)
    services = {g: ServiceConfig(g, node="n1", memory_mb=2048) for g in ("a", "b", "c", "d")}

    def obs(t: float, running: set[str], **n2: Any) -> dict[str, HostObservation]:
        return {
            "n1": HostObservation(
                "n1", t, frozenset(running), 16384, 16384 - 2048 * len(running), 8
            ),
            "n2": HostObservation("n2", t, frozenset(), 16384, 16384, 8, **n2),
        }

    everyone = {"a", "b", "c", "d"}
    status = tick(Snapshot(obs(0.0, everyone), services), 0.0).status  # adopted, rebalancer off
    snap = Snapshot(obs(1.0, everyone), services, status=status, settings=on)
    moving = Rulebook(snap, 1.0).rebalance()
    assert moving.stance is Stance.MOVING and [m.target for m in moving.moves] == ["n2", "n2"]
    assert moving.reason == "memory use differs by 50%, more than 20%"
    off = Rulebook(replace(snap, settings=Settings()), 1.0).rebalance()
    assert off.stance is Stance.OFF and off.moves == ()
    maint = Snapshot(obs(1.0, everyone, maintenance=True), services, status=status, settings=on)
    paused = Rulebook(maint, 1.0).rebalance()
    assert (paused.stance, paused.reason) == (Stance.PAUSED, "paused: host n2 is maintenance")
    crashed = Snapshot(obs(1.0, everyone - {"a"}), services, status=status, settings=on)
    paused = Rulebook(crashed, 1.0).rebalance()
    assert (paused.stance, paused.reason) == (Stance.PAUSED, "paused: a is recovering")
    # the tick sends at most rebalance_max_moves, then holds while they are in flight
    d = tick(snap, 1.0)
    assert len(d.actions) == 2
    after = Rulebook(replace(snap, status=d.status), 1.5).rebalance()
    assert after.stance is Stance.HOLDING and after.reason.endswith("2 moves in flight")


def test_a_guest_a_person_moved_cools_down_too() -> None:
    from dataclasses import replace

    from console.engine import Command, CommandKind, ServiceConfig, Settings, tick

    on = Settings(rebalance=True, rebalance_hold_s=0.0, rebalance_min_gain=0.01)
    services = {g: ServiceConfig(g, node="n1", memory_mb=2048) for g in ("a", "b", "c", "d")}
    hosts = {
        n: HostObservation(n, 0.0, frozenset(services if n == "n1" else ()), 16384, 8192, 8)
        for n in ("n1", "n2", "n3")
    }
    status = tick(Snapshot(hosts, services), 0.0).status
    moved = tick(
        Snapshot(
            hosts, services, status=status, commands=(Command("p", CommandKind.MIGRATE, "a", "n2"),)
        ),
        0.5,
    )
    done = moved.status.services["a"]
    assert done.rebalanced_at == 0.5
    # once it runs on n2, the rebalancer may move others, never "a" back before the cool-down
    from console.engine.states import ServiceState

    settled = replace(
        moved.status,
        services={
            **moved.status.services,
            "a": replace(done, state=ServiceState.STARTED, node="n2", target=None, action=None),
        },
        pending={},
    )
    later = {
        "n1": replace(hosts["n1"], last_heartbeat=1.0, running=frozenset({"b", "c", "d"})),
        "n2": replace(hosts["n2"], last_heartbeat=1.0, running=frozenset({"a"})),
        "n3": replace(hosts["n3"], last_heartbeat=1.0),
    }
    outlook = Rulebook(Snapshot(later, services, status=settled, settings=on), 1.0).rebalance()
    assert outlook.moves and all(m.service != "a" for m in outlook.moves)
