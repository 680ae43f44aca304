"""Unit tests of `tick`: every host and service state change, commands, results, status."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from itertools import pairwise

import pytest

from console.engine import (
    HOST_STATES,
    SERVICE_STATES,
    ActionResult,
    Command,
    CommandKind,
    Decision,
    Desired,
    Fence,
    FenceStatus,
    HostObservation,
    HostState,
    Migrate,
    Recovery,
    Relocate,
    ReplyOutcome,
    ServiceConfig,
    ServiceState,
    Snapshot,
    Start,
    Status,
    Stop,
    tick,
)
from console.engine.model import Domain
from console.engine.states import (
    HOST_TRANSITIONS,
    NEW_HOST_STATES,
    NEW_SERVICE_STATES,
    SERVICE_TRANSITIONS,
)
from console.engine.status import ServiceStatus, service_from_json, service_to_json
from console.engine.tick import IllegalTransition, _Tick

H, S = HostState, ServiceState


@dataclass
class Cluster:
    """A hand-driven cluster: hosts heartbeat unless silenced; `step` runs one tick."""

    hosts: dict[str, int] = field(default_factory=lambda: {"n1": 8192, "n2": 8192, "n3": 8192})
    services: dict[str, ServiceConfig] = field(default_factory=dict)
    running: dict[str, set[str]] = field(default_factory=dict)
    silent: set[str] = field(default_factory=set)
    last: dict[str, float] = field(default_factory=dict)
    flags: dict[str, dict[str, object]] = field(default_factory=dict)
    status: Status = field(default_factory=Status)
    now: float = 0.0
    #: Snapshot.view_since / ingest_lag_s for the next steps
    view_since: float | None = None
    ingest_lag_s: float = 0.0
    #: Snapshot.shared_mounts and .domains
    shared_mounts: frozenset[str] = frozenset()
    domains: dict[str, Domain] = field(default_factory=dict)

    def add(self, name: str, node: str | None = None, **kw: object) -> None:
        self.services[name] = ServiceConfig(name=name, node=node, **kw)  # type: ignore[arg-type]
        if node is not None:
            self.running.setdefault(node, set()).add(name)

    def step(
        self,
        dt: float = 1.0,
        results: tuple[ActionResult, ...] = (),
        commands: tuple[Command, ...] = (),
    ) -> Decision:
        self.now += dt
        obs = {}
        for h, mem in self.hosts.items():
            if h not in self.silent:
                self.last[h] = self.now
            guests = self.running.get(h, set())
            used = sum(self.services[g].memory_mb for g in guests)
            obs[h] = HostObservation(
                h,
                self.last.get(h),
                frozenset(guests),
                mem,
                mem - used,
                8,
                **self.flags.get(h, {}),  # type: ignore[arg-type]
            )
        snap = Snapshot(
            obs,
            self.services,
            self.domains,
            results=results,
            commands=commands,
            status=self.status,
            view_since=self.view_since,
            ingest_lag_s=self.ingest_lag_s,
            shared_mounts=self.shared_mounts,
        )
        d = tick(snap, self.now)
        self.status = d.status
        return d

    def svc(self, name: str) -> tuple[ServiceState, str | None]:
        s = self.status.services[name]
        return s.state, s.node

    def host(self, name: str) -> HostState:
        return self.status.hosts[name].state


def ok(*actions: object) -> tuple[ActionResult, ...]:
    return tuple(ActionResult(a.id, True) for a in actions)  # type: ignore[attr-defined]


def failed(*actions: object) -> tuple[ActionResult, ...]:
    return tuple(ActionResult(a.id, False, "boom") for a in actions)  # type: ignore[attr-defined]


def started_cluster(**kw: object) -> Cluster:
    c = Cluster()
    c.add("g", "n1", **kw)
    c.step()
    return c


# --- state tables ----------------------------------------------------------------------------


def test_every_state_has_a_description_and_a_row() -> None:
    assert set(HOST_STATES) == set(HostState) == set(HOST_TRANSITIONS)
    assert set(SERVICE_STATES) == set(ServiceState) == set(SERVICE_TRANSITIONS)
    assert all(text.strip() for text in [*HOST_STATES.values(), *SERVICE_STATES.values()])
    assert set(HostState) >= NEW_HOST_STATES and set(ServiceState) >= NEW_SERVICE_STATES
    for state, targets in SERVICE_TRANSITIONS.items():
        assert state not in targets


def test_illegal_transition_raises() -> None:
    c = started_cluster()
    t = _Tick(Snapshot({}, c.services, status=c.status), 5.0)
    with pytest.raises(IllegalTransition):
        t._service_to("g", S.WAITING, "no")
    with pytest.raises(IllegalTransition):
        t._host_to("n1", H.FENCED, "no")


# --- hosts -------------------------------------------------------------------------------------


def test_new_hosts_online_or_offline() -> None:
    c = Cluster()
    c.silent.add("n3")
    d = c.step()
    assert [c.host(h) for h in ("n1", "n2", "n3")] == [H.ONLINE, H.ONLINE, H.OFFLINE]
    assert "host n1: new -> online (new)" in d.log


def test_silent_host_with_guests_is_fenced_then_guests_recover() -> None:
    c = started_cluster()
    c.silent.add("n1")
    for _ in range(3):
        assert c.step().actions == ()
    d = c.step()
    assert c.host("n1") is H.FENCING and c.svc("g") == (S.FENCE, "n1")
    (fence,) = d.actions
    assert isinstance(fence, Fence) and fence.host == "n1"
    c.running.pop("n1")
    d = c.step(results=ok(fence))
    assert c.host("n1") is H.FENCED
    (start,) = d.actions
    assert isinstance(start, Start) and start.host == "n2" and c.svc("g") == (S.STARTING, "n2")
    assert "g: fence -> recovering (host n1 fenced)" in d.log
    c.running["n2"] = {"g"}
    c.step(results=ok(start))
    assert c.svc("g") == (S.STARTED, "n2")
    c.silent.discard("n1")
    c.step()
    assert c.host("n1") is H.ONLINE


def test_fence_failure_backs_off_and_retries() -> None:
    c = started_cluster()
    c.silent.add("n1")
    times = []
    for _ in range(60):
        d = c.step()
        fences = [a for a in d.actions if isinstance(a, Fence)]
        if fences:
            times.append(c.now)
            c.step(dt=0, results=failed(*fences))
            assert c.host("n1") is H.UNREACHABLE and "retry in" in c.status.hosts["n1"].reason
        assert not [a for a in d.actions if isinstance(a, Start)]
    assert [b - a for a, b in pairwise(times)] == [5.0, 10.0, 20.0]


def test_no_fence_device_waits_with_reason_and_acknowledgement_recovers() -> None:
    c = started_cluster()
    c.flags["n1"] = {"fence_device": False}
    c.silent.add("n1")
    for _ in range(10):
        assert c.step().actions == ()
    assert c.host("n1") is H.UNREACHABLE
    assert "no fence device" in c.status.hosts["n1"].reason
    c.flags["n1"] = {"fence_device": False, "acknowledged_down_at": c.now}
    d = c.step()
    assert c.host("n1") is H.FENCED
    assert [type(a) for a in d.actions] == [Start]


def test_old_acknowledgement_does_not_cover_a_new_silence() -> None:
    c = started_cluster()
    c.flags["n1"] = {"fence_device": False, "acknowledged_down_at": 0.5}
    c.silent.add("n1")
    for _ in range(6):
        assert c.step().actions == ()
    assert c.host("n1") is H.UNREACHABLE


def test_fencing_storm_fences_nobody_and_raises_alarm() -> None:
    c = Cluster()
    for i, h in enumerate(("n1", "n2", "n3")):
        c.add(f"g{i}", h)
    c.step()
    c.silent |= {"n1", "n2"}
    for _ in range(10):
        assert c.step().actions == ()
    assert "fencing storm: 2 of 3" in c.status.alarm
    assert c.host("n1") is H.UNREACHABLE and c.svc("g0") == (S.FENCE, "n1")
    c.silent.discard("n2")
    d = c.step()
    # the storm cleared: fencing is held for one liveness window (3 s), then n1 is fenced
    assert "a fencing storm just cleared" in c.status.alarm and d.actions == ()
    assert c.svc("g1") == (S.STARTED, "n2")
    assert c.step().actions == () and c.step().actions == ()
    d = c.step()
    assert c.status.alarm == "" and "alarm cleared" in d.log
    assert [a.host for a in d.actions if isinstance(a, Fence)] == ["n1"]


def test_no_data_after_a_fresh_view_is_not_silence() -> None:
    c = Cluster()
    c.add("g", "n1")
    c.step()
    c.view_since = c.now  # e.g. a broker restart emptied the heartbeat store
    c.silent.add("n1")
    c.last.pop("n1")
    for _ in range(2):
        d = c.step()
        assert d.actions == () and c.host("n1") is H.ONLINE
        assert "view of heartbeats started afresh" in c.status.alarm
    d = c.step()  # a full liveness window of data: n1 is silent now, and fenced
    assert c.status.alarm == "" and c.host("n1") is H.FENCING
    assert [type(a) for a in d.actions] == [Fence]


def test_no_fencing_while_the_console_lags() -> None:
    c = started_cluster()
    c.ingest_lag_s = 5.0
    c.silent.add("n1")
    for _ in range(6):
        assert c.step().actions == ()
    assert c.host("n1") is H.ONLINE and c.svc("g") == (S.STARTED, "n1")
    assert "behind on its heartbeats by more than 1s" in c.status.alarm
    c.ingest_lag_s = 0.0
    d = c.step()
    assert c.status.alarm == "" and [type(a) for a in d.actions] == [Fence]


def test_lost_fence_result_is_followed_by_a_status_query() -> None:
    c = started_cluster()
    c.silent.add("n1")
    while not (d := c.step()).actions:
        pass
    (fence,) = d.actions
    assert isinstance(fence, Fence)
    d = c.step(dt=c.status.pending[fence.id].deadline - c.now)
    (query,) = d.actions
    assert isinstance(query, FenceStatus) and query.host == "n1"
    assert c.host("n1") is H.FENCING
    c.step(results=failed(query))  # the device says on, or cannot tell: fence again
    assert c.host("n1") is H.UNREACHABLE and "retry in 5s" in c.status.hosts["n1"].reason
    d = c.step(dt=5.0)
    (fence,) = d.actions
    assert isinstance(fence, Fence)
    (query,) = c.step(dt=c.status.pending[fence.id].deadline - c.now).actions
    c.step(results=ok(query))
    assert c.host("n1") is H.FENCED


def test_silent_host_without_guests_goes_offline_unfenced() -> None:
    c = started_cluster()
    c.silent.add("n3")
    for _ in range(5):
        assert c.step().actions == ()
    assert c.host("n3") is H.OFFLINE


def test_maintenance_and_shutdown_flags() -> None:
    c = Cluster()
    c.step()
    c.flags["n1"] = {"maintenance": True}
    c.flags["n2"] = {"shutting_down": True}
    c.step()
    assert c.host("n1") is H.MAINTENANCE and c.host("n2") is H.MAINTENANCE
    c.silent.add("n2")
    for _ in range(4):
        c.step()
    assert c.host("n2") is H.OFFLINE and c.status.hosts["n2"].shut_down
    c.flags["n1"] = {}
    c.step()
    assert c.host("n1") is H.ONLINE


# --- services ----------------------------------------------------------------------------------


def test_new_services_adopted_placed_or_left_alone() -> None:
    c = Cluster()
    c.add("run", "n1")
    c.add("new", memory_mb=1024)
    c.add("off", desired=Desired.STOPPED)
    c.add("dis", desired=Desired.DISABLED)
    c.add("manual", autostart=False)
    d = c.step()
    assert c.svc("run") == (S.STARTED, "n1")
    assert c.svc("new") == (S.STARTING, "n2")
    assert c.svc("off")[0] is S.STOPPED and c.svc("dis")[0] is S.DISABLED
    assert c.svc("manual")[0] is S.STOPPED
    assert c.status.services["manual"].desired is Desired.STOPPED
    assert [(type(a), a.service) for a in d.actions] == [(Start, "new")]  # type: ignore[union-attr]


def test_crash_restarts_in_place_and_start_failure_counts() -> None:
    c = started_cluster(max_restarts=1, restart_window_s=100)
    c.running["n1"] = set()
    d = c.step()
    (start,) = d.actions
    assert isinstance(start, Start) and start.host == "n1"
    assert c.status.services["g"].restarts == (c.now,)
    d = c.step(results=failed(start))
    (start2,) = d.actions
    assert isinstance(start2, Start) and start2.host == "n2"
    assert c.status.services["g"].failed_nodes == ("n1",)
    d = c.step(results=failed(start2))
    assert c.svc("g")[0] is S.FAILED and d.actions == ()


def test_recovery_disable_and_relocate() -> None:
    c = started_cluster(recovery=Recovery.DISABLE)
    c.running["n1"] = set()
    d = c.step()
    assert c.svc("g")[0] is S.DISABLED and d.actions == ()
    assert c.status.services["g"].desired is Desired.DISABLED
    c = started_cluster(recovery=Recovery.RELOCATE)
    c.running["n1"] = set()
    (start,) = c.step().actions
    assert isinstance(start, Start) and start.host == "n2"


def test_stale_and_unknown_results_are_ignored() -> None:
    c = started_cluster()
    c.running["n1"] = set()
    (start,) = c.step().actions
    d = c.step(results=(ActionResult("zzz", True),))
    assert "ignored result of unknown or stale action zzz" in d.log
    c.running["n1"] = {"g"}
    c.step(results=ok(start))
    before = c.status
    d = c.step(results=ok(start))
    assert c.status.services == before.services


def test_action_without_result_is_unknown_and_the_hosts_reports_decide() -> None:
    c = started_cluster()
    c.running["n1"] = set()
    (start,) = c.step().actions
    assert c.svc("g")[0] is S.STARTING
    d = c.step(dt=c.status.pending[start.id].deadline - c.now)
    assert any("no result of start in 300s: unknown" in line for line in d.log)
    assert d.actions == () and c.svc("g") == (S.STARTING, "n1")
    # n1 does not report it for a liveness window (3 s): the failure path, in place
    assert c.step().actions == () and c.step().actions == ()
    assert c.svc("g")[0] is S.STARTING
    c.step()
    assert c.svc("g")[0] is S.RECOVERING and c.status.services["g"].suspects == ("n1",)
    assert [type(a) for a in c.step(dt=1.0).actions] == [Start]


def test_lost_start_result_reported_running_is_started() -> None:
    c = started_cluster()
    c.running["n1"] = set()
    (start,) = c.step().actions
    c.running["n1"] = {"g"}  # the start happened; its result never comes
    d = c.step(dt=c.status.pending[start.id].deadline - c.now)
    assert c.svc("g") == (S.STARTED, "n1") and d.actions == ()
    assert "g: starting -> started (n1 reports it running (result lost))" in d.log


def test_lost_migration_result_both_hosts_decide() -> None:
    c = started_cluster()
    (mig,) = c.step(commands=(Command("c1", CommandKind.MIGRATE, "g", "n2"),)).actions
    assert isinstance(mig, Migrate)
    c.step(dt=c.status.pending[mig.id].deadline - c.now)
    # still on the source (the migration never happened): settled only after a window
    assert c.svc("g") == (S.MIGRATING, "n1")
    for _ in range(2):
        c.step()
        assert c.svc("g") == (S.MIGRATING, "n1")
    d = c.step()
    assert c.svc("g") == (S.STARTED, "n1") and d.actions == ()
    # and a migration that did happen: the target's report settles it at once
    (mig,) = c.step(dt=20, commands=(Command("c2", CommandKind.MIGRATE, "g", "n2"),)).actions
    c.running = {"n2": {"g"}}
    c.step(dt=c.status.pending[mig.id].deadline - c.now)
    assert c.svc("g") == (S.STARTED, "n2")


def test_restarts_of_a_start_that_always_fails_back_off() -> None:
    """Unlimited restarts must not spin: 0, 1, 2, 4 ... s apart, at most 30 s."""
    c = started_cluster()
    c.running["n1"] = set()
    starts: list[float] = []
    for _ in range(120):
        d = c.step(dt=0.5)
        for action in d.actions:
            assert isinstance(action, Start)
            starts.append(c.now)
            c.step(dt=0.1, results=(ActionResult(action.id, False, "boom"),))
    gaps = [round(b - a) for a, b in pairwise(starts)]
    assert gaps[:5] == [1, 2, 4, 8, 16]
    assert max(gaps) <= 31


def test_stop_command_stop_result_and_failed_stop() -> None:
    c = started_cluster()
    d = c.step(commands=(Command("c1", CommandKind.STOP, "g"),))
    (stop,) = d.actions
    assert isinstance(stop, Stop) and c.svc("g") == (S.STOPPING, "n1")
    assert d.replies[0].outcome is ReplyOutcome.ACCEPTED
    c.step(results=failed(stop))
    assert c.svc("g") == (S.STARTED, "n1")
    assert c.step().actions == ()  # waits retry_s before stopping again
    d = c.step(dt=10)
    (stop,) = d.actions
    c.running["n1"] = set()
    c.step(results=ok(stop))
    assert c.svc("g") == (S.STOPPED, None)


def test_migrate_ok_and_failed_keeps_source() -> None:
    c = started_cluster()
    d = c.step(commands=(Command("c1", CommandKind.MIGRATE, "g", "n3"),))
    (mig,) = d.actions
    assert isinstance(mig, Migrate) and c.svc("g") == (S.MIGRATING, "n1")
    c.step(results=failed(mig))
    assert c.svc("g") == (S.STARTED, "n1")
    d = c.step(commands=(Command("c2", CommandKind.MIGRATE, "g", "n3"),))
    (mig,) = d.actions
    c.running = {"n3": {"g"}}
    c.step(results=ok(mig))
    assert c.svc("g") == (S.STARTED, "n3")


def test_failed_relocation_waits_for_reports_before_restarting() -> None:
    c = started_cluster()
    d = c.step(commands=(Command("c1", CommandKind.RELOCATE, "g", "n2"),))
    (rel,) = d.actions
    assert isinstance(rel, Relocate) and c.svc("g") == (S.RELOCATING, "n1")
    c.silent.add("n1")  # no fresh report from the source yet
    d = c.step(dt=0.5, results=failed(rel))
    assert c.svc("g")[0] is S.RECOVERING and d.actions == ()
    c.silent.discard("n1")  # the source reports it still runs there: adopted, not restarted
    d = c.step(dt=0.5)
    assert c.svc("g") == (S.STARTED, "n1") and d.actions == ()


def test_commands_queued_while_busy_refused_when_queue_full() -> None:
    c = started_cluster()
    d = c.step(commands=(Command("c1", CommandKind.MIGRATE, "g", "n2"),))
    (mig,) = d.actions
    d = c.step(
        commands=(Command("c2", CommandKind.STOP, "g"), Command("c3", CommandKind.DISABLE, "g"))
    )
    assert [r.outcome for r in d.replies] == [ReplyOutcome.QUEUED, ReplyOutcome.REFUSED]
    c.running = {"n2": {"g"}}
    d = c.step(results=ok(mig))
    assert [(r.command_id, r.outcome) for r in d.replies] == [("c2", ReplyOutcome.ACCEPTED)]
    (stop,) = d.actions
    assert isinstance(stop, Stop) and stop.host == "n2"


def test_command_refusals_carry_codes() -> None:
    c = started_cluster(migratable=False)
    d = c.step(
        commands=(
            Command("c1", CommandKind.MIGRATE, "g", "n2"),
            Command("c2", CommandKind.RELOCATE, "g", "nowhere"),
            Command("c3", CommandKind.START, "ghost"),
            Command("c4", CommandKind.RELOCATE, "g", "n1"),
        )
    )
    assert [r.code for r in d.replies] == [
        "not-migratable",
        "unknown-node",
        "unknown-service",
        "same-node",
    ]
    assert d.actions == ()


def test_stray_copy_is_stopped_and_duplicate_kept_once() -> None:
    c = started_cluster()
    c.running["n2"] = {"g"}
    d = c.step()
    (stop,) = d.actions
    assert isinstance(stop, Stop) and stop.host == "n2"
    assert c.step().actions == ()  # not stopped twice while the first stop is in flight
    assert c.svc("g") == (S.STARTED, "n1")


def test_failback_on_join_by_migration() -> None:
    from console.engine import Domain, DomainMember

    c = Cluster()
    c.add("g", "n2", domain="pref")
    dom = Domain("pref", (DomainMember("n1", 1), DomainMember("n2", 2)), ordered=True)
    c.silent.add("n1")
    snap_domains = {"pref": dom}
    c.step()
    c.silent.discard("n1")
    obs_status = c.status
    d = tick(
        Snapshot(
            {
                h: HostObservation(h, c.now + 1, frozenset(c.running.get(h, ())), 8192, 8192, 8)
                for h in c.hosts
            },
            c.services,
            snap_domains,
            status=obs_status,
        ),
        c.now + 1,
    )
    (mig,) = d.actions
    assert isinstance(mig, Migrate) and (mig.source, mig.target) == ("n2", "n1")


# --- status ------------------------------------------------------------------------------------


def test_status_json_round_trip() -> None:
    c = started_cluster()
    c.step(commands=(Command("c1", CommandKind.MIGRATE, "g", "n2"),))
    c.step(commands=(Command("c2", CommandKind.STOP, "g"),))
    text = c.status.to_json()
    back = Status.from_json(text)
    assert back.to_json() == text
    assert back.services == c.status.services and back.hosts == c.status.hosts
    assert back.pending == c.status.pending
    assert back.active_services() == c.status.active_services()
    with pytest.raises(ValueError):
        Status.from_json('{"version": 0}')


def test_a_stored_service_status_reads_back_field_by_field() -> None:
    """Every field of ServiceStatus is written and read back by its type (tuples, enums, the
    queued command, None); a field missing from an older row takes its default, and a row
    without a field that has none is refused, not guessed."""
    full = ServiceStatus(
        ServiceState.MIGRATING,
        Desired.STARTED,
        node="n1",
        target="n2",
        action="a7",
        since=3.5,
        restarts=(1.0, 2.5),
        failed_nodes=("n3",),
        suspects=("n3", "n4"),
        queued=Command("c9", CommandKind.RELOCATE, "g", "n2"),
        lost_at=4.0,
        failback=True,
        rebalanced_at=None,
    )
    assert service_from_json(service_to_json(full)) == full
    row = json.loads(service_to_json(full))
    del row["outage"], row["saved_on"]
    assert service_from_json(json.dumps(row)) == full
    del row["desired"]
    with pytest.raises(ValueError, match="without desired"):
        service_from_json(json.dumps(row))


def test_tick_is_deterministic() -> None:
    def run() -> list[str]:
        c = Cluster()
        for i in range(6):
            c.add(f"g{i}", "n1" if i % 2 else None, memory_mb=512 * (i + 1))
        c.step()
        c.silent.add("n1")
        out: list[str] = []
        for _ in range(6):
            d = c.step()
            out += [repr(a) for a in d.actions] + list(d.log)
        return out

    assert run() == run()


def test_ids_are_fresh_and_prefixed() -> None:
    c = Cluster()
    c.add("a")
    c.add("b")
    d = c.step()
    ids = [a.id for a in d.actions]
    assert ids == ["a1", "a2"]
    snap = Snapshot({}, {}, status=replace(c.status), id_prefix="x-")
    assert tick(snap, 5.0).status.next_id == 2
