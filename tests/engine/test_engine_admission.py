"""Admission control (console/engine/admission.py): failover capacity after losing the worst
hosts, checked against a brute force over every set of lost hosts, and the engine's refusal."""

from __future__ import annotations

from itertools import combinations

from hypothesis import given, settings
from hypothesis import strategies as st

from console.engine import (
    Command,
    CommandKind,
    Desired,
    HostObservation,
    ReplyOutcome,
    Rulebook,
    ServiceConfig,
    Settings,
    Snapshot,
    tick,
)
from console.engine.admission import Load, capacity, tolerated


def _brute_spare(caps: dict[str, int], loads: list[Load], k: int) -> int:
    """The smallest margin over every set of `k` lost hosts and every protected priority."""
    used = {h: sum(g.memory_mb for g in loads if g.host == h) for h in caps}
    levels = {g.priority for g in loads if g.protected}
    worst: int | None = None
    for lost in combinations(sorted(caps), min(k, len(caps))):
        for q in levels:
            needed = sum(
                g.memory_mb for g in loads if g.priority >= q and (g.host in lost or g.host is None)
            )
            free = sum(caps[h] - used[h] for h in caps if h not in lost)
            free += sum(
                g.memory_mb for g in loads if g.priority < q and g.host not in (*lost, None)
            )
            spare = free - needed
            worst = spare if worst is None else min(worst, spare)
    assert worst is not None
    return worst


@st.composite
def clusters(draw: st.DrawFn) -> tuple[dict[str, int], list[Load], int]:
    hosts = [f"h{i}" for i in range(draw(st.integers(1, 5)))]
    caps = {h: draw(st.sampled_from([4096, 8192, 16384])) for h in hosts}
    room = dict(caps)
    loads: list[Load] = []
    for i in range(draw(st.integers(1, 10))):
        mem = draw(st.sampled_from([512, 1024, 2048, 4096]))
        host = draw(st.sampled_from([None, *hosts]))
        if host is not None and room[host] < mem:
            host = None
        if host is not None:
            room[host] -= mem
        loads.append(Load(f"g{i}", mem, draw(st.integers(0, 3)), draw(st.booleans()), host))
    if not any(g.protected for g in loads):
        loads[0] = Load(loads[0].name, loads[0].memory_mb, loads[0].priority, True, loads[0].host)
    return caps, loads, draw(st.integers(0, len(hosts)))


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_worst_hosts_are_the_worst_of_every_choice(
    cluster: tuple[dict[str, int], list[Load], int],
) -> None:
    caps, loads, k = cluster
    used = {h: sum(g.memory_mb for g in loads if g.host == h) for h in caps}
    found = capacity(caps, used, loads, k)
    assert found.spare_mb == _brute_spare(caps, loads, k)
    assert found.ok == (found.spare_mb >= 0)
    assert found.spare_mb == found.free_mb - found.needed_mb
    assert len(found.worst) == min(k, len(caps))
    # how many failures it survives: the largest k that is ok (0 if even 0 is not)
    oks = [capacity(caps, used, loads, j).ok for j in range(len(caps) + 1)]
    assert oks == sorted(oks, reverse=True)  # losing more hosts never helps
    assert tolerated(caps, used, loads) == max((j for j, ok in enumerate(oks) if ok), default=0)


def test_preemptible_guests_count_as_free() -> None:
    """Two 8 GiB hosts: prod (priority 5) on each, lab (priority 0) filling h2. Losing h1,
    prod restarts on h2 by stopping lab: the cluster survives, lab's memory counted as free."""
    caps = {"h1": 8192, "h2": 8192}
    loads = [
        Load("prod1", 4096, 5, True, "h1"),
        Load("prod2", 4096, 5, True, "h2"),
        Load("lab", 4096, 0, False, "h2"),
    ]
    used = {"h1": 4096, "h2": 8192}
    found = capacity(caps, used, loads, 1)
    assert found.ok and found.priority == 5 and found.spare_mb == 0
    assert found.describe() == "survives 1 host failure; 0.0 GiB spare"
    # the same lab guest at prod's priority is not preemptible: it must restart too
    same = [*loads[:2], Load("lab", 4096, 5, False, "h2")]
    found = capacity(caps, used, same, 1)
    assert not found.ok and (found.needed_mb, found.free_mb) == (8192, 4096)
    assert found.describe() == "does not survive 1 host failure: 4.0 GiB short"
    assert found.refusal() == (
        "the cluster would not survive 1 host failure: after losing h2, guests of priority 5 "
        "and above need 8192 MiB and 4096 MiB would be free (4096 MiB short)"
    )


def _obs(name: str, mem: int, running: set[str]) -> HostObservation:
    return HostObservation(name, 0.0, frozenset(running), mem, mem, 8)


def test_the_engine_refuses_a_start_that_breaks_n_plus_1_and_the_rulebook_says_so() -> None:
    services = {
        "a": ServiceConfig("a", node="n1", memory_mb=4096),
        "b": ServiceConfig("b", node="n2", memory_mb=4096),
        "c": ServiceConfig("c", desired=Desired.STOPPED, memory_mb=2048),
        "lab": ServiceConfig("lab", desired=Desired.STOPPED, memory_mb=2048, protected=False),
    }
    hosts = {"n1": _obs("n1", 8192, {"a"}), "n2": _obs("n2", 8192, {"b"})}
    status = tick(Snapshot(hosts, services), 0.0).status
    snap = Snapshot(hosts, services, status=status)
    book = Rulebook(snap, 0.5)
    refusal = book.start_refusal("c")
    assert refusal is not None and refusal.code.value == "admission"
    assert "need 6144 MiB and 4096 MiB would be free (2048 MiB short)" in refusal.reason
    assert book.start_refusal("lab") is None  # opted out: never refused
    assert book.capacity().describe() == "survives 1 host failure; 0.0 GiB spare"
    assert book.tolerated() == 1
    d = tick(
        Snapshot(hosts, services, status=status, commands=(Command("q", CommandKind.START, "c"),)),
        0.5,
    )
    (reply,) = d.replies
    assert (reply.outcome, reply.code, reply.reason) == (
        ReplyOutcome.REFUSED,
        refusal.code,
        refusal.reason,
    )
    # a service about to be created is checked the same way
    new = ServiceConfig("new", memory_mb=1024)
    assert book.start_refusal(new) is not None
    # 0 disables admission control
    off = Snapshot(hosts, services, status=status, settings=Settings(host_failures_to_tolerate=0))
    assert Rulebook(off, 0.5).start_refusal("c") is None
