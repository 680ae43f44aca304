"""Guests on a shared file system run only where it is mounted: a host back from a reboot is
online before its GFS2 is (the storage lab saw a return migration fail on it: "Cannot access
storage file /guest_roots/guest1.img")."""

from __future__ import annotations

from console.engine import (
    Domain,
    DomainMember,
    Migrate,
    RefusalCode,
    ServiceState,
    Start,
    move_refusal,
)
from console.engine.model import HostObservation, Snapshot
from tests.engine.test_engine_tick import Cluster, ok

ROOTS = "/guest_roots"
DISK = (f"{ROOTS}/g.img",)
S = ServiceState


def cluster(mounted: dict[str, frozenset[str] | None]) -> Cluster:
    c = Cluster(shared_mounts=frozenset({ROOTS, "/other"}))
    for host, mounts in mounted.items():
        c.flags[host] = {"mounted": mounts}
    return c


def test_a_returning_host_takes_its_guests_back_only_once_their_storage_is_mounted() -> None:
    c = cluster({h: frozenset({ROOTS}) for h in ("n1", "n2", "n3")})
    c.add("g", "n1", disks=DISK)
    c.step()
    c.flags["n1"] = {"maintenance": True, "mounted": frozenset({ROOTS})}
    (drain,) = c.step().actions
    assert isinstance(drain, Migrate) and drain.source == "n1"
    c.running = {drain.target: {"g"}}
    c.step(results=ok(drain))
    assert c.status.services["g"].home == "n1"
    # back from maintenance (a reboot), before /guest_roots is mounted again
    c.flags["n1"] = {"mounted": frozenset()}
    for _ in range(3):
        assert c.step().actions == ()
    s = c.status.services["g"]
    assert s.state is S.STARTED and s.node == drain.target
    assert s.reason == f"returns to n1 once n1 has {ROOTS} mounted"
    c.flags["n1"] = {"mounted": frozenset({ROOTS, "/other"})}
    (back,) = c.step().actions
    assert isinstance(back, Migrate) and (back.source, back.target) == (drain.target, "n1")


def test_a_failback_waits_for_the_better_hosts_storage() -> None:
    c = cluster({"n1": frozenset({ROOTS}), "n2": frozenset({ROOTS}), "n3": frozenset({ROOTS})})
    c.domains["pref"] = Domain("pref", (DomainMember("n1", 1), DomainMember("n2", 2)), ordered=True)
    c.add("g", "n2", domain="pref", disks=DISK)
    c.silent.add("n1")
    c.step()
    c.silent.discard("n1")
    c.flags["n1"] = {"mounted": frozenset()}
    assert c.step().actions == ()
    assert c.status.services["g"].reason == f"fails back to n1 once it has {ROOTS} mounted"
    assert c.step().actions == ()  # the debt is looked at every heartbeat meanwhile
    c.flags["n1"] = {"mounted": frozenset({ROOTS})}
    (mig,) = c.step().actions
    assert isinstance(mig, Migrate) and (mig.source, mig.target) == ("n2", "n1")


def test_recovery_starts_only_where_the_storage_is_and_says_so_when_nowhere() -> None:
    c = cluster({"n1": frozenset({ROOTS}), "n2": frozenset(), "n3": frozenset({ROOTS})})
    c.add("g", "n1", disks=DISK)
    c.add("local", "n1", disks=("/var/lib/libvirt/images/l.img",))
    c.step()
    c.running["n1"] = set()  # both crash; in place is no longer possible for g:
    c.flags["n1"] = {"mounted": frozenset()}  # its host lost the mount
    starts = {a.service: a.host for a in c.step().actions if isinstance(a, Start)}
    assert starts == {"g": "n3", "local": "n1"}

    c = cluster({"n1": frozenset({ROOTS}), "n2": frozenset(), "n3": None})
    c.add("g", disks=DISK)
    c.flags["n1"] = {"maintenance": True}
    c.flags["n3"] = {"mounted": frozenset()}  # the agent says: nothing mounted
    assert c.step().actions == ()
    assert c.svc("g") == (S.WAITING, None)
    assert c.status.services["g"].reason == f"no allowed host has {ROOTS} mounted"
    c.flags["n3"] = {"mounted": None}  # an agent that does not say: taken as mounted
    (start,) = c.step().actions
    assert isinstance(start, Start) and start.host == "n3"


def test_a_persons_move_to_a_host_without_the_storage_is_refused_with_the_reason() -> None:
    c = cluster({"n1": frozenset({ROOTS}), "n2": frozenset(), "n3": frozenset({ROOTS})})
    c.add("g", "n1", disks=DISK)
    c.step()
    obs = {
        h: HostObservation(h, c.now, frozenset({"g"} if h == "n1" else ()), 8192, 8192, 8, **f)  # type: ignore[arg-type]
        for h, f in c.flags.items()
    }
    snap = Snapshot(obs, c.services, status=c.status, shared_mounts=c.shared_mounts)
    refusal = move_refusal(snap, c.now, "g", "n2", True)
    assert refusal is not None and refusal.code is RefusalCode.NO_STORAGE
    assert refusal.reason == f"n2 does not have {ROOTS} mounted"
    assert move_refusal(snap, c.now, "g", "n3", True) is None
