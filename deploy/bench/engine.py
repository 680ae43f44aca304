"""Time one HA engine `tick` at several cluster sizes (not a test).

    .venv/bin/python -m deploy.bench.engine      (or: python deploy/bench/engine.py)

For 3, 32 and 128 hosts with 10, 1,000 and 10,000 services it prints the time of one tick in
steady state and the tick right after a host carrying 1/128 of the services fails (the tick
that fences it), and the tick after the fence succeeds (the one that places its guests).
Target: <= 100 ms for 128 hosts x 10,000 services.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from console.engine import (
    ActionResult,
    Decision,
    Domain,
    DomainMember,
    Fence,
    HostObservation,
    ServiceConfig,
    Snapshot,
    Status,
    tick,
)

REPEAT = 5


def cluster(hosts: int, services: int) -> tuple[dict[str, ServiceConfig], dict[str, Domain]]:
    names = [f"h{i:03d}" for i in range(hosts)]
    domains = {
        f"d{i:03d}": Domain(f"d{i:03d}", (DomainMember(n, 1),), ordered=True)
        for i, n in enumerate(names)
    }
    # the first host carries 1/128 of the services, the others share the rest evenly
    first = max(1, services // 128) if hosts > 1 else services
    conf: dict[str, ServiceConfig] = {}
    for i in range(services):
        host = names[0] if i < first else names[1 + (i - first) % (hosts - 1)]
        conf[f"vm{i:05d}"] = ServiceConfig(
            name=f"vm{i:05d}",
            node=host,
            memory_mb=64,
            priority=i % 3,
            domain=f"d{names.index(host):03d}",
        )
    return conf, domains


def observe(
    conf: dict[str, ServiceConfig], hosts: int, now: float, dead: set[str]
) -> dict[str, HostObservation]:
    running: dict[str, set[str]] = {f"h{i:03d}": set() for i in range(hosts)}
    for name, c in conf.items():
        assert c.node is not None
        running[c.node].add(name)
    return {
        h: HostObservation(
            name=h,
            last_heartbeat=(now - 60 if h in dead else now),
            running=frozenset(g),
            memory_total_mb=1024 * 1024,
            memory_free_mb=1024 * 1024 - 64 * len(g),
            cpus=64,
        )
        for h, g in running.items()
    }


def timed(snap: Snapshot, now: float) -> tuple[float, Decision]:
    best = float("inf")
    decision = None
    for _ in range(REPEAT):
        start = time.perf_counter()
        decision = tick(snap, now)
        best = min(best, time.perf_counter() - start)
    assert decision is not None
    return best * 1000, decision


def bench(hosts: int, services: int) -> tuple[float, float, float]:
    conf, domains = cluster(hosts, services)
    obs = observe(conf, hosts, 10.0, set())
    first = tick(Snapshot(obs, conf, domains, status=Status()), 10.0).status
    settled = tick(Snapshot(obs, conf, domains, status=first), 11.0).status
    obs = observe(conf, hosts, 12.0, set())
    steady, _ = timed(Snapshot(obs, conf, domains, status=settled), 12.0)
    obs = observe(conf, hosts, 80.0, {"h000"})
    failed, d = timed(Snapshot(obs, conf, domains, status=settled), 80.0)
    fences = [a for a in d.actions if isinstance(a, Fence)]
    results = tuple(ActionResult(a.id, True) for a in fences)
    obs = observe(conf, hosts, 81.0, {"h000"})
    placed, _ = timed(Snapshot(obs, conf, domains, results=results, status=d.status), 81.0)
    return steady, failed, placed


def main() -> None:
    print(f"one tick, best of {REPEAT} (ms)")
    print(f"{'hosts':>5} {'services':>8} {'steady':>9} {'host fails':>11} {'recovery':>9}")
    for hosts in (3, 32, 128):
        for services in (10, 1_000, 10_000):
            steady, failed, placed = bench(hosts, services)
            print(f"{hosts:>5} {services:>8} {steady:>9.2f} {failed:>11.2f} {placed:>9.2f}")


if __name__ == "__main__":
    main()
