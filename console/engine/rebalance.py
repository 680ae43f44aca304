"""The live rebalancer's planner: which running guests to live-migrate so that the online
hosts' memory use evens out. Pure; `tick` decides when it may act (opt-in, paused in
maintenance and incidents, hold time, moves in flight, cool-down) and hands it the guests that
may move.

The plan is greedy and stops for good: while the spread of memory-use fractions (most used
host minus least used) is above `spread`, take the most used host that has a guest that can
go, and move its least important (then biggest) guest to the least used host of the guest's
own tier that has room for its memory and vCPUs, provided the move

- does not overshoot: afterwards the target is not fuller (as a fraction) than the source;
- narrows the gap between the two by at least `min_gain` (a fraction of memory).

Every such move lowers sum(used^2 / capacity) over the hosts, so plans never go round in
circles; each guest appears at most once in a plan, and `tick` gives every guest it moved a
cool-down. Applying a plan and planning again (the moved guests cooling down) proposes nothing
(pinned by a property test, tests/engine/test_engine_rebalance.py).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class HostLoad:
    """One online host as the rebalancer sees it."""

    name: str
    mem_cap: int
    mem_used: int
    #: the most vCPUs it may run (None: no limit)
    vcpu_cap: int | None = None
    vcpu_used: int = 0


class Movable(NamedTuple):
    """A running guest that may be live-migrated now (a tuple: thousands are made a tick)."""

    name: str
    host: str
    memory_mb: int
    cpus: int
    priority: int
    #: the hosts of its current tier of its failover domain (where it may go)
    tier: Collection[str]


@dataclass(frozen=True, slots=True)
class Move:
    service: str
    source: str
    target: str
    #: how much the gap between source and target narrows (fraction of memory)
    gain: float
    #: memory-use fractions of source and target before the move
    before: tuple[float, float]


class Stance(StrEnum):
    """What the rebalancer is doing, for people (with `Outlook.reason`)."""

    OFF = "off"  # not enabled for the cluster
    PAUSED = "paused"  # a host not online, a recovery pending, an alarm
    BALANCED = "balanced"  # the spread is within the threshold
    HOLDING = "holding"  # above the threshold, but not yet for the hold time
    MOVING = "moving"  # moves planned (and sent, as many as may be in flight)
    STUCK = "stuck"  # above the threshold, but no move gains enough


@dataclass(frozen=True, slots=True)
class Outlook:
    """The rebalancer's plan and why."""

    stance: Stance
    reason: str
    spread: float = 0.0
    moves: tuple[Move, ...] = ()


def fractions(hosts: Mapping[str, HostLoad]) -> dict[str, float]:
    return {h: x.mem_used / x.mem_cap for h, x in hosts.items() if x.mem_cap > 0}


def spread(hosts: Mapping[str, HostLoad]) -> float:
    """Most used minus least used host, as fractions of their memory (0 for < 2 hosts)."""
    fr = fractions(hosts)
    return max(fr.values()) - min(fr.values()) if len(fr) > 1 else 0.0


def plan(
    hosts: Mapping[str, HostLoad],
    guests: Sequence[Movable],
    *,
    spread_limit: float,
    min_gain: float,
    limit: int | None = None,
) -> list[Move]:
    """The moves, in order, that even out memory use (at most `limit` of them)."""
    used = {h: x.mem_used for h, x in hosts.items() if x.mem_cap > 0}
    cap = {h: hosts[h].mem_cap for h in used}
    cpu = {h: hosts[h].vcpu_used for h in used}
    on: dict[str, list[Movable]] = {h: [] for h in used}
    for g in guests:
        if g.host in on:
            on[g.host].append(g)
    for movable in on.values():
        movable.sort(key=lambda g: (g.priority, -g.memory_mb, g.name))
    smallest = min(cap.values(), default=1)
    moves: list[Move] = []
    moved: set[str] = set()
    while limit is None or len(moves) < limit:
        fr = {h: used[h] / cap[h] for h in used}
        if len(fr) < 2 or max(fr.values()) - min(fr.values()) <= spread_limit:
            break
        targets = sorted(fr, key=lambda h: (fr[h], h))
        found = _first_move(on, moved, fr, targets, used, cap, cpu, hosts, smallest, min_gain)
        if found is None:
            break
        g, target, gain = found
        moves.append(Move(g.name, g.host, target, gain, (fr[g.host], fr[target])))
        moved.add(g.name)
        used[g.host] -= g.memory_mb
        used[target] += g.memory_mb
        cpu[g.host] -= g.cpus
        cpu[target] += g.cpus
    return moves


def _first_move(
    on: Mapping[str, list[Movable]],
    moved: set[str],
    fr: Mapping[str, float],
    targets: Sequence[str],
    used: Mapping[str, int],
    cap: Mapping[str, int],
    cpu: Mapping[str, int],
    hosts: Mapping[str, HostLoad],
    smallest: int,
    min_gain: float,
) -> tuple[Movable, str, float] | None:
    for source in reversed(targets):  # the most used host first
        fs = fr[source]
        for g in on[source]:
            if g.name in moved:
                continue
            m = g.memory_mb
            if m / cap[source] + m / smallest < min_gain:
                continue  # too small to narrow any gap enough
            for target in targets:
                fd = fr[target]
                if fd >= fs:
                    break
                if target == source or target not in g.tier:
                    continue
                if used[target] + m > cap[target]:
                    continue
                vcap = hosts[target].vcpu_cap
                if vcap is not None and cpu[target] + g.cpus > vcap:
                    continue
                fs2, fd2 = (used[source] - m) / cap[source], (used[target] + m) / cap[target]
                if fd2 > fs2:
                    continue  # overshoot: the target would be the fuller one
                gain = (fs - fd) - (fs2 - fd2)
                if gain >= min_gain:
                    return g, target, gain
    return None
