"""Property tests: random clusters and event sequences never break the two safety invariants.

1. never two running copies of a guest;
2. never a start of a guest before the silent host it ran on is confirmed fenced (or reports
   again).

The simulator checks both at every start and migration (`Run.violations`); the last test shows
that check catches an engine that breaks them.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import console.engine.sim.world as world
from console.engine import Decision, ServiceState, Snapshot, Start
from console.engine.sim import failures, parse, simulate

NODES = ["n1", "n2", "n3", "n4"]
NODE_EVENTS = [
    "power_off", "power_on", "network_off", "network_on", "fail_fence",
    "maintenance_on", "maintenance_off", "shutdown", "lose_results",
]  # fmt: skip
SERVICE_EVENTS = [
    "crash", "fail_starts", "fail_migrations", "start", "stop", "enable", "disable",
    "lose_results",
]  # fmt: skip
MOVE_EVENTS = ["migrate", "relocate"]


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    n_nodes = draw(st.integers(2, 4))
    nodes = [
        {
            "name": name,
            "memory_mb": draw(st.sampled_from([4096, 8192])),
            "cpus": 4,
            "fence": draw(st.sampled_from(["ok", "ok", "ok", "fails", "none"])),
        }
        for name in NODES[:n_nodes]
    ]
    names = [n["name"] for n in nodes]
    domains = [
        {
            "name": "dom",
            "ordered": draw(st.booleans()),
            "restricted": draw(st.booleans()),
            "nofailback": draw(st.booleans()),
            "members": [
                {"node": names[0], "priority": 1},
                {"node": names[1], "priority": 2},
            ],
        }
    ]
    services = []
    for i in range(draw(st.integers(1, 5))):
        svc: dict[str, Any] = {
            "name": f"s{i}",
            "desired": draw(st.sampled_from(["started", "started", "stopped"])),
            "memory_mb": draw(st.sampled_from([512, 1024, 3072])),
            "priority": draw(st.integers(0, 3)),
            "recovery": draw(st.sampled_from(["restart", "relocate", "disable"])),
            "max_restarts": draw(st.integers(0, 2)),
            "restart_window_s": draw(st.sampled_from([0, 30])),
            "max_relocations": draw(st.integers(0, 2)),
            "migratable": draw(st.booleans()),
        }
        if draw(st.booleans()):
            svc["node"] = draw(st.sampled_from(names))
        if draw(st.booleans()):
            svc["domain"] = "dom"
        services.append(svc)
    snames = [s["name"] for s in services]
    events = []
    for _ in range(draw(st.integers(0, 12))):
        t = draw(st.integers(1, 150))
        kind = draw(st.sampled_from(["node", "node", "service", "move", "console"]))
        if kind == "node":
            do = draw(st.sampled_from(NODE_EVENTS))
            event: dict[str, Any] = {"t": t, "do": do, "node": draw(st.sampled_from(names))}
            if do in ("fail_fence", "lose_results"):
                event["count"] = draw(st.integers(1, 3))
        elif kind == "service":
            do = draw(st.sampled_from(SERVICE_EVENTS))
            event = {"t": t, "do": do, "service": draw(st.sampled_from(snames))}
            if do in ("fail_starts", "fail_migrations", "lose_results"):
                event["count"] = draw(st.integers(1, 3))
        elif kind == "console":  # the console's own view restarts or lags
            event = {"t": t, "do": draw(st.sampled_from(["console_restart", "console_lag"]))}
            if draw(st.booleans()):
                event["node"] = draw(st.sampled_from(names))
            event["for"] = draw(st.sampled_from([1, 2.5, 10]))
            if event["do"] == "console_lag":
                event["s"] = draw(st.sampled_from([0.5, 2, 5]))
        else:
            event = {
                "t": t,
                "do": draw(st.sampled_from(MOVE_EVENTS)),
                "service": draw(st.sampled_from(snames)),
                "node": draw(st.sampled_from(names)),
            }
        events.append(event)
    return {
        "name": "random",
        "nodes": nodes,
        "domains": domains,
        "services": services,
        "events": events,
        "until": 240,
        # short timeouts, so that lost results matter within the run
        "settings": {
            "action_timeout_s": 20,
            "fence_timeout_s": 10,
            # slow moves too: a host can go silent while one is under way
            "migrate_s": draw(st.sampled_from([2, 6])),
            "start_s": draw(st.sampled_from([1, 4])),
        },
    }


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_histories_keep_both_invariants(raw: dict[str, Any]) -> None:
    sc = parse(raw)
    run = simulate(sc)
    assert run.violations == []
    assert failures(sc, run) == []  # no expectations: only the invariants can fail
    # every copy that stops running has its `down:` label (a completed migration too)
    for name in sc.services:
        ups = sum(1 for _, lab in run.trace if lab.startswith(f"running:{name}@"))
        downs = sum(1 for _, lab in run.trace if lab.startswith(f"down:{name}@"))
        assert ups - downs == sum(1 for h in run.hosts.values() if name in h.guests)
    # and the engine's own view agrees with the world about where started guests run
    for name, s in run.status.services.items():
        if s.state is ServiceState.STARTED and s.node is not None:
            host = run.hosts[s.node]
            if host.power and host.network:
                others = [h for h, x in run.hosts.items() if name in x.guests and h != s.node]
                assert others == [] or all(not run.hosts[h].network for h in others)


def test_the_invariant_check_catches_an_unsafe_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine that starts guests of silent hosts at once must be caught."""
    real_tick = world.tick

    def unsafe(snap: Snapshot, now: float) -> Decision:
        d = real_tick(snap, now)
        extra = tuple(
            Start(f"bad{name}{now}", name, "n2")
            for name, s in d.status.services.items()
            if s.state is ServiceState.FENCE
        )
        return Decision(d.status, d.actions + extra, d.log, d.replies, d.transitions)

    monkeypatch.setattr(world, "tick", unsafe)
    raw = {
        "nodes": [{"name": n, "memory_mb": 8192, "fence": "none"} for n in ("n1", "n2", "n3")],
        "services": [{"name": "g", "node": "n1"}],
        "events": [{"t": 10, "do": "network_off", "node": "n1"}],
        "until": 30,
    }
    run = simulate(parse(raw))
    assert any("two copies" in v for v in run.violations)
    assert any("may still run on silent n1" in v for v in run.violations)
