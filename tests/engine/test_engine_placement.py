"""Placement: domain tiers, the memory/balance rule, preemption."""

from __future__ import annotations

from console.engine import Domain, DomainMember, ServiceConfig
from console.engine import placement as pl

HOSTS = ["a", "b", "c", "d"]


def dom(*members: tuple[str, int], ordered: bool = False, restricted: bool = False) -> Domain:
    return Domain(
        "d", tuple(DomainMember(n, p) for n, p in members), ordered=ordered, restricted=restricted
    )


def usage(mem: dict[str, int], cap: int = 1000, cpus: int = 4) -> pl.Usage:
    u = pl.Usage(mem_cap=dict.fromkeys(HOSTS, cap), cpu_cap=dict.fromkeys(HOSTS, cpus))
    for host, used in mem.items():
        u.mem[host] = used
    return u


def svc(name: str = "s", memory: int = 100, priority: int = 0, cpus: int = 1) -> ServiceConfig:
    return ServiceConfig(name=name, memory_mb=memory, priority=priority, cpus=cpus)


def test_no_domain_is_one_tier() -> None:
    assert pl.tiers(None, HOSTS) == (tuple(HOSTS),)
    assert pl.tiers(None, []) == ()


def test_ordered_domain_tiers_by_priority_then_non_members() -> None:
    d = dom(("c", 2), ("a", 1), ("b", 2), ordered=True)
    assert pl.tiers(d, HOSTS) == (("a",), ("b", "c"), ("d",))
    assert pl.tiers(d, ["b", "c", "d"]) == (("b", "c"), ("d",))
    assert [pl.rank(d, h) for h in HOSTS] == [0, 1, 1, 2]


def test_unordered_domain_members_are_equal() -> None:
    d = dom(("c", 5), ("a", 1))
    assert pl.tiers(d, HOSTS) == (("a", "c"), ("b", "d"))
    assert pl.rank(d, "a") == pl.rank(d, "c") == 0
    assert pl.rank(d, "b") == 1


def test_restricted_domain_never_uses_non_members() -> None:
    d = dom(("a", 1), ordered=True, restricted=True)
    assert pl.tiers(d, HOSTS) == (("a",),)
    assert pl.tiers(d, ["b", "c"]) == ()
    assert pl.allowed(d, "a") and not pl.allowed(d, "b")
    assert pl.allowed(None, "b") and pl.allowed(dom(("a", 1)), "b")


def test_lowest_memory_fraction_wins() -> None:
    u = usage({"a": 500, "b": 100, "c": 300, "d": 900})
    assert pl.choose((tuple(HOSTS),), svc(), u) == "b"


def test_fraction_is_compared_exactly_across_capacities() -> None:
    u = pl.Usage(mem_cap={"a": 3, "b": 1000000}, cpu_cap={"a": 1, "b": 1})
    u.mem["b"] = 333333 - 1
    # after placing 1: a = 1/3, b = 333333/1000000 < 1/3 (a float rounding trap nearby)
    assert pl.choose((("a", "b"),), svc(memory=1), u) == "b"
    u.mem["b"] = 333334 - 1
    assert pl.choose((("a", "b"),), svc(memory=1), u) == "a"


def test_tie_breaks_free_memory_then_cpu_then_count_then_name() -> None:
    u = pl.Usage(mem_cap={"a": 1000, "b": 2000}, cpu_cap={"a": 4, "b": 4})
    u.mem.update(a=400, b=900)  # after +100: 1/2 vs 1/2; b has more free memory
    assert pl.choose((("a", "b"),), svc(), u) == "b"
    u = usage({"a": 100, "b": 100})
    u.cpu.update(a=3, b=1)
    assert pl.choose((("a", "b"),), svc(), u) == "b"
    u = usage({"a": 100, "b": 100})
    u.count.update(a=1, b=2)
    assert pl.choose((("a", "b"),), svc(), u) == "a"
    assert pl.choose((("b", "a"),), svc(), usage({})) == "a"


def test_host_without_room_is_not_a_candidate_and_next_tier_is_used() -> None:
    u = usage({"a": 950, "b": 500})
    assert pl.choose((("a",), ("b",)), svc(), u) == "b"
    assert pl.choose((("a",),), svc(), u) is None
    assert pl.choose((("a", "b"),), svc(), u, exclude={"b"}) is None


def test_preemption_stops_least_important_first() -> None:
    u = usage({"a": 900})
    victims = {
        "a": sorted([svc("x", 300, 1), svc("y", 200, 0), svc("z", 200, 5)], key=pl.victim_order)
    }
    plan = pl.preemption_plan((("a",),), svc("p", 400, priority=3), u, victims)
    assert plan is not None and plan.host == "a" and plan.victims == ("y", "x")


def test_preemption_never_stops_equal_or_higher_priority() -> None:
    u = usage({"a": 900})
    victims = {"a": [svc("x", 900, 3)]}
    assert pl.preemption_plan((("a",),), svc("p", 400, priority=3), u, victims) is None


def test_preemption_prefers_host_needing_fewest_stops_and_waits_for_stops_in_flight() -> None:
    u = usage({"a": 900, "b": 900})
    victims = {
        "a": sorted([svc("a1", 100), svc("a2", 100), svc("a3", 100)], key=pl.victim_order),
        "b": [svc("b1", 300)],
    }
    plan = pl.preemption_plan((("a", "b"),), svc("p", 250, priority=1), u, victims)
    assert plan is not None and (plan.host, plan.victims) == ("b", ("b1",))
    u.stopping["a"] = 200
    plan = pl.preemption_plan((("a", "b"),), svc("p", 250, priority=1), u, victims)
    assert plan is not None and (plan.host, plan.victims) == ("a", ())
    u.claimed["a"] = 200
    plan = pl.preemption_plan((("a", "b"),), svc("p", 250, priority=1), u, victims, taken={"b1"})
    assert plan is not None and plan.host == "a" and len(plan.victims) == 2


def test_vcpu_limit_is_a_hard_limit_beside_memory() -> None:
    u = usage({}, cap=1000, cpus=2)
    u.vcpu_cap = {"a": 8, "b": 8}  # c and d: no limit
    u.cpu["a"] = 6
    s4 = svc(memory=100, cpus=4)
    assert not u.fits("a", s4) and u.fits("b", s4) and u.fits("c", s4)
    assert u.no_room("a", s4) == (
        "needs 4 vCPUs, a runs 6 of at most 8 (2 CPUs x the overcommit ratio)"
    )
    assert pl.choose((("a",),), s4, u) is None


def test_preemption_frees_vcpus_too() -> None:
    """Memory is free on a but its vCPUs are taken: stopping a less important guest there
    (its vCPUs) makes room."""
    u = usage({"a": 200}, cap=1000, cpus=1)
    u.vcpu_cap = {"a": 4}
    u.cpu["a"] = 4
    low = svc("low", memory=100, priority=0, cpus=2)
    big = svc("big", memory=100, priority=5, cpus=2)
    plan = pl.preemption_plan((("a",),), big, u, {"a": [low]})
    assert plan is not None and plan.victims == ("low",)
    too_big = svc("wide", memory=100, priority=5, cpus=7)
    assert pl.preemption_plan((("a",),), too_big, u, {"a": [low]}) is None
