"""Admission control (N+1 by memory): can the cluster lose its worst `k` hosts and still
restart every protected guest?

The check is on memory in aggregate (like vSphere's "cluster resource percentage"), not a
bin-packing: after losing the hosts `F`, the guests that ran there need room on the
survivors `S`. The engine restarts guests highest priority first and stops less important
ones to make room, so the question is asked once per priority `q` of a protected guest:

    needed(q) = memory of the guests on F with priority >= q
              + memory of the guests with priority >= q that wait for a host anyway
    free(q)   = free memory on S + memory of the guests on S with priority < q (preemptible)

and the cluster survives when needed(q) <= free(q) for every such `q` and every `F` of `k`
hosts. For one `q`, `free(S) - needed(F)` is a total minus a sum over `F` of a per-host score
(the host's guests >= q, its free memory, its preemptible guests), so the worst `F` is simply
the `k` hosts with the largest score: exact, and O(levels x hosts). Guests that opted out
(`ServiceConfig.protected` false) are not a level of their own, but while their priority is at
least `q` they still count as needed at `q` (the engine would restart them first). Failover
domains are not looked at (a restricted guest may find less room than this says).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple


class Load(NamedTuple):
    """One guest the cluster must keep running (a tuple: 10,000 are made per question)."""

    name: str
    memory_mb: int
    priority: int
    #: counted by admission control (its start is refused if the cluster could not restart it)
    protected: bool
    #: the usable host it holds memory on; None: it waits for a host (or leaves a drained one)
    host: str | None


@dataclass(frozen=True, slots=True)
class Capacity:
    """The failover capacity for losing `tolerate` hosts (the worst ones)."""

    tolerate: int
    #: every protected guest can restart after the worst `tolerate` host failures
    ok: bool
    #: the smallest margin over the priorities checked, in MiB (negative: short by that much)
    spare_mb: int
    #: at that priority: memory needed after the worst failure, and memory free for it
    needed_mb: int
    free_mb: int
    #: the priority whose guests decide (None when nothing is protected)
    priority: int | None
    #: the hosts whose loss is the worst case
    worst: tuple[str, ...]
    #: usable hosts counted
    hosts: int

    def describe(self) -> str:
        """For people: "survives 1 host failure; 3.2 GiB spare"."""
        k = self.tolerate
        failures = f"{k} host failure{'s' if k != 1 else ''}"
        gib = abs(self.spare_mb) / 1024
        if self.priority is None:
            return f"no protected guests ({self.free_mb / 1024:.1f} GiB free after {failures})"
        if self.ok:
            return f"survives {failures}; {gib:.1f} GiB spare"
        return f"does not survive {failures}: {gib:.1f} GiB short"

    def refusal(self) -> str:
        """Why starting one more protected guest is refused, with the numbers."""
        hosts = ", ".join(self.worst) or "none"
        level = f" of priority {self.priority} and above" if self.priority is not None else ""
        return (
            f"the cluster would not survive {self.tolerate} host "
            f"failure{'s' if self.tolerate != 1 else ''}: after losing {hosts}, guests{level} "
            f"need {self.needed_mb} MiB and {self.free_mb} MiB would be free "
            f"({self.needed_mb - self.free_mb} MiB short)"
        )


@dataclass(frozen=True, slots=True)
class _Level:
    """At one protected priority `q`: per host, the memory needed if it fails (`need`) and
    what it offers if it survives (`avail`: free plus preemptible), and the memory of the
    guests >= `q` waiting for a host anyway."""

    priority: int | None
    need: dict[str, int]
    avail: dict[str, int]
    waiting: int


def _levels(
    mem_cap: Mapping[str, int], mem_used: Mapping[str, int], loads: Iterable[Load]
) -> Iterator[_Level]:
    hosts = sorted(mem_cap)
    free = {h: mem_cap[h] - mem_used.get(h, 0) for h in hosts}
    guests = sorted(loads, key=lambda g: (-g.priority, g.name))
    levels = sorted({g.priority for g in guests if g.protected}, reverse=True)
    # the level walks down, moving guests from preemptible (`low`) to needed
    need = dict.fromkeys(hosts, 0)
    low = dict.fromkeys(hosts, 0)
    for g in guests:
        if g.host in low:
            low[g.host] += g.memory_mb
    waiting = 0
    i = 0
    everyone: list[int | None] = [None]  # nothing protected: everything counts, for show
    for q in levels or everyone:
        while i < len(guests) and (q is None or guests[i].priority >= q):
            g = guests[i]
            if g.host in need:
                need[g.host] += g.memory_mb
                low[g.host] -= g.memory_mb
            else:
                waiting += g.memory_mb
            i += 1
        yield _Level(q, dict(need), {h: free[h] + low[h] for h in hosts}, waiting)


def capacity(
    mem_cap: Mapping[str, int],
    mem_used: Mapping[str, int],
    loads: Iterable[Load],
    tolerate: int,
) -> Capacity:
    """Failover capacity of the usable hosts `mem_cap` (memory they may give guests; `mem_used`
    what guests hold there now, including `loads` on them) after losing `tolerate` of them."""
    hosts = sorted(mem_cap)
    k = max(0, min(tolerate, len(hosts)))
    best: Capacity | None = None
    for level in _levels(mem_cap, mem_used, loads):
        need, avail = level.need, level.avail
        worst = heapq.nlargest(k, hosts, key=lambda h: (need[h] + avail[h], h))
        lost = set(worst)
        needed = level.waiting + sum(need[h] for h in worst)
        spare_free = sum(avail[h] for h in hosts if h not in lost)
        spare = spare_free - needed
        if best is None or spare < best.spare_mb:
            best = Capacity(
                tolerate=tolerate,
                ok=level.priority is None or spare >= 0,
                spare_mb=spare,
                needed_mb=needed,
                free_mb=spare_free,
                priority=level.priority,
                worst=tuple(sorted(worst)),
                hosts=len(hosts),
            )
    assert best is not None
    return best


def tolerated(
    mem_cap: Mapping[str, int], mem_used: Mapping[str, int], loads: Iterable[Load]
) -> int:
    """How many host failures (the worst ones) the cluster survives, restarting every
    protected guest: the largest `k` whose margin is not negative at any level (all hosts
    when nothing is protected). One pass: at each level the margin after losing the `k`
    worst hosts is the total offered minus the `k` largest per-host scores."""
    most = len(mem_cap)
    for level in _levels(mem_cap, mem_used, loads):
        if level.priority is None:
            return most
        scores = sorted((level.need[h] + level.avail[h] for h in mem_cap), reverse=True)
        margin = sum(level.avail.values()) - level.waiting
        k = 0
        while k < most and margin - scores[k] >= 0:
            margin -= scores[k]
            k += 1
        if margin < 0:  # short even before losing a host
            return 0
        most = min(most, k)
    return most
