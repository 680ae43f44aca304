"""The rulebook (`move_refusal`, `best_host`) gives the answers `tick` gives.

A page or the API asking "may guest X move to host Y?" must get the answer the engine would
give to that command: the property test compares them over random snapshots.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from console.engine import (
    Command,
    CommandKind,
    Desired,
    Domain,
    DomainMember,
    HostObservation,
    Refusal,
    RefusalCode,
    ReplyOutcome,
    Rulebook,
    ServiceConfig,
    Snapshot,
    Start,
    best_host,
    move_refusal,
    tick,
)

HOSTS = ["n1", "n2", "n3", "n4"]
NOW = 10.0


def _obs(
    name: str, heartbeat: float | None, running: set[str], mem: int, cpus: int = 8, **kw: Any
) -> Any:
    return HostObservation(name, heartbeat, frozenset(running), mem, mem, cpus, **kw)


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    hosts = HOSTS[: draw(st.integers(2, 4))]
    mem = {h: draw(st.sampled_from([2048, 4096, 8192])) for h in hosts}
    # few CPUs on some hosts: the vCPU overcommit limit (4 per CPU) refuses moves too
    cpus = {h: draw(st.sampled_from([1, 2, 8])) for h in hosts}
    domain = Domain(
        "dom",
        (DomainMember(hosts[0], 1), DomainMember(hosts[1], 2)),
        ordered=draw(st.booleans()),
        restricted=draw(st.booleans()),
    )
    services: dict[str, ServiceConfig] = {}
    running: dict[str, set[str]] = {h: set() for h in hosts}
    for i in range(draw(st.integers(1, 6))):
        name = f"s{i}"
        node = draw(st.sampled_from([None, *hosts]))
        desired = draw(st.sampled_from([Desired.STARTED, Desired.STARTED, Desired.STOPPED]))
        services[name] = ServiceConfig(
            name,
            desired=desired,
            node=node,
            memory_mb=draw(st.sampled_from([512, 1024, 3072])),
            migratable=draw(st.booleans()),
            domain=draw(st.sampled_from([None, "dom"])),
            priority=draw(st.integers(0, 2)),
            cpus=draw(st.sampled_from([1, 2, 4])),
        )
        if node is not None and desired is Desired.STARTED:
            running[node].add(name)
    domains = {"dom": domain}
    # first tick: everything heard from, guests adopted where they run
    first = Snapshot(
        {h: _obs(h, 0.0, running[h], mem[h], cpus[h]) for h in hosts}, services, domains
    )
    status = tick(first, 0.0).status
    # some of people's commands in between, so that some guests are busy
    commands = tuple(
        Command(
            f"p{i}", draw(st.sampled_from(list(CommandKind))), name, draw(st.sampled_from(hosts))
        )
        for i, name in enumerate(draw(st.lists(st.sampled_from(sorted(services)), max_size=3)))
    )
    second = Snapshot(
        {h: _obs(h, 1.0, running[h], mem[h], cpus[h]) for h in hosts},
        services,
        domains,
        commands=commands,
        status=status,
    )
    status = tick(second, 1.0).status
    # now: each host fresh, late, silent or never reported again; some in maintenance
    obs = {}
    for h in hosts:
        beat = draw(st.sampled_from([NOW - 0.5, NOW - 2.0, NOW - 6.0, 1.0]))
        obs[h] = _obs(h, beat, running[h], mem[h], cpus[h], maintenance=draw(st.booleans()))
    return Snapshot(obs, services, domains, status=status)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots(), st.booleans())
def test_move_refusal_accepts_exactly_what_tick_accepts(snap: Snapshot, live: bool) -> None:
    book = Rulebook(snap, NOW)
    kind = CommandKind.MIGRATE if live else CommandKind.RELOCATE
    for service in sorted(snap.services):
        answers = book.move_targets(service, live)
        assert set(answers) == set(snap.hosts)
        for host, refusal in answers.items():
            d = tick(replace(snap, commands=(Command("q", kind, service, host),)), NOW)
            (reply,) = [r for r in d.replies if r.command_id == "q"]
            if refusal is None:
                assert reply.outcome is ReplyOutcome.ACCEPTED, (service, host, reply)
            else:
                queued = refusal.code is RefusalCode.BUSY and "applied when" in refusal.reason
                want = ReplyOutcome.QUEUED if queued else ReplyOutcome.REFUSED
                assert reply.outcome is want, (service, host, reply)
                assert (reply.code, reply.reason) == (refusal.code, refusal.reason)
            assert move_refusal(snap, NOW, service, host, live) == refusal


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots())
def test_best_host_is_where_tick_sends_a_guest(snap: Snapshot) -> None:
    """A drained guest goes to `best_host`, and so does a never-run guest a person starts."""
    fresh = {n: replace(o, last_heartbeat=NOW, maintenance=False) for n, o in snap.hosts.items()}
    snap = replace(snap, hosts=fresh)
    settled = tick(snap, NOW)
    snap = replace(snap, status=settled.status)
    if tick(snap, NOW + 0.1).actions:
        return  # something else is still being placed or moved: not this property
    svcs = snap.status.services
    needing = {n for n, s in svcs.items() if s.state.value in ("waiting", "recovering")}
    for name, s in sorted(svcs.items()):
        if s.state.value == "started" and s.node is not None:
            if any(o.node == s.node for o2, o in svcs.items() if o2 != name):
                continue  # several guests drain from that host, one after another
            if s.desired.value != "started" or needing:
                continue
            node = s.node
            drained = replace(
                snap, hosts={**snap.hosts, node: replace(snap.hosts[node], maintenance=True)}
            )
            d = tick(drained, NOW + 0.1)
            targets = [getattr(a, "target", None) for a in d.actions]
            assert targets == (
                []
                if best_host(snap, NOW + 0.1, name) is None
                else [best_host(snap, NOW + 0.1, name)]
            )
        elif s.state.value == "stopped" and s.last_node is None and not needing:
            cmd = Command("q", CommandKind.START, name)
            d = tick(replace(snap, commands=(cmd,)), NOW + 0.1)
            starts = [a.host for a in d.actions if isinstance(a, Start)]
            expected = best_host(snap, NOW + 0.1, name)
            if Rulebook(snap, NOW + 0.1).start_refusal(name) is not None:
                expected = None  # admission control refuses the start (the rulebook says so)
            assert starts == ([] if expected is None else [expected])


def test_rulebook_refusals_name_the_reason() -> None:
    services = {"g": ServiceConfig("g", node="n1", migratable=False, memory_mb=1024)}
    hosts = {
        "n1": _obs("n1", 0.0, {"g"}, 4096),
        "n2": _obs("n2", 0.0, set(), 4096),
        "n3": _obs("n3", 0.0, set(), 512),
    }
    status = tick(Snapshot(hosts, services), 0.0).status
    snap = Snapshot(hosts, services, status=status)
    book = Rulebook(snap, 0.5)
    assert book.move_refusal("g", "n2", True) == Refusal(
        RefusalCode.NOT_MIGRATABLE, "cannot be live-migrated; relocate it instead"
    )
    assert book.move_refusal("g", "n2", False) is None
    refusal = book.move_refusal("g", "n3", False)
    assert refusal is not None and refusal.code is RefusalCode.NO_ROOM
    assert book.move_refusal("nope", "n2", False) == Refusal(
        RefusalCode.UNKNOWN_SERVICE, "no such service"
    )
    assert book.best_host("g") == "n2"


def test_vcpu_refusals_name_the_numbers() -> None:
    """The vCPU limit (CPUs x overcommit, the host's own ratio first) refuses like memory."""
    services = {
        "a": ServiceConfig("a", node="n1", cpus=4),
        "b": ServiceConfig("b", node="n1", cpus=4),
        "c": ServiceConfig("c", node="n2", cpus=4),
    }
    hosts = {
        "n1": _obs("n1", 0.0, {"a", "b"}, 65536, cpus=2),
        "n2": _obs("n2", 0.0, {"c"}, 4096, cpus=8),
        "n3": _obs("n3", 0.0, set(), 65536, cpus=3, cpu_overcommit=1.0),
        "n4": _obs("n4", 0.0, set(), 4096, cpus=1, cpu_overcommit=0.0),
    }
    status = tick(Snapshot(hosts, services), 0.0).status
    book = Rulebook(Snapshot(hosts, services, status=status), 0.5)
    assert book.move_refusal("c", "n1", True) == Refusal(
        RefusalCode.NO_ROOM,
        "needs 4 vCPUs, n1 runs 8 of at most 8 (2 CPUs x the overcommit ratio)",
    )
    assert book.move_refusal("c", "n3", True) == Refusal(
        RefusalCode.NO_ROOM,
        "needs 4 vCPUs, n3 runs 0 of at most 3 (3 CPUs x the overcommit ratio)",
    )
    assert book.move_refusal("c", "n4", True) is None  # ratio 0: no limit
    # the memory-emptiest host n1 is full by vCPUs: a drain of n2 picks n4
    assert book.best_host("c") == "n4"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots(), st.sampled_from([CommandKind.START, CommandKind.ENABLE]))
def test_start_refusal_is_what_tick_answers(snap: Snapshot, kind: CommandKind) -> None:
    """Admission control: the rulebook refuses a start or enable exactly when tick does
    (before people's commands: a queued command applied first may change the answer)."""
    if any(s.queued is not None for s in snap.status.services.values()):
        return
    book = Rulebook(snap, NOW)
    for service in sorted(snap.services):
        refusal = book.start_refusal(service)
        d = tick(replace(snap, commands=(Command("q", kind, service),)), NOW)
        (reply,) = [r for r in d.replies if r.command_id == "q"]
        if reply.code == RefusalCode.ADMISSION:
            assert refusal is not None and reply.reason == refusal.reason
        elif reply.outcome is ReplyOutcome.ACCEPTED:
            assert refusal is None, (service, refusal)
