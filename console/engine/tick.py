"""`tick(snapshot, now) -> Decision`: the whole HA engine, one pure step.

A tick runs these phases in order, each over sorted names so runs are deterministic:

1. services: adopt services seen for the first time, forget deleted ones;
2. results: match action results (and timeouts) to what is in flight;
3. hosts: liveness from heartbeats, fencing (with backoff, storm guard, acknowledgements);
4. reports: guests that crashed, guests running where they should not (stopped or adopted);
5. commands: a person's requests (applied, queued while the service is busy, or refused);
6. desired state: stop what should not run, collect what must be placed;
7. placement: highest priority first, preempting less important guests when nothing fits;
8. moves: drain hosts in maintenance, return drained guests, fail back to better tiers;
9. rebalance (opt-in): even out memory use by live migration (`rebalance.py`).

Every state change goes through `_Tick._service_to` / `_Tick._host_to`, which check the tables
in `states.py` and log the change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from console.engine import rebalance
from console.engine.admission import Capacity, Load, capacity, tolerated
from console.engine.commands import Command, CommandKind
from console.engine.model import (
    Action,
    ActionResult,
    Decision,
    Domain,
    Fence,
    FenceStatus,
    HealthFailure,
    HostObservation,
    MadeRoom,
    Migrate,
    Refusal,
    RefusalCode,
    Relocate,
    Reply,
    ReplyOutcome,
    ServiceConfig,
    Snapshot,
    Start,
    Stop,
    StopReason,
    Subject,
    Transition,
)
from console.engine.placement import (
    Tiers,
    Usage,
    allowed,
    choose,
    preemption_plan,
    rank,
    tiers,
    vcpu_limit,
    victim_order,
)
from console.engine.rebalance import Outlook, Stance
from console.engine.states import (
    HOST_TRANSITIONS,
    NEW_HOST_STATES,
    NEW_SERVICE_STATES,
    SERVICE_TRANSITIONS,
    Desired,
    HostState,
    Recovery,
    ServiceState,
)
from console.engine.status import (
    HostStatus,
    Pending,
    PendingKind,
    ServiceStatus,
    Status,
    _is_active,
)

S = ServiceState
H = HostState
K = PendingKind
R = RefusalCode

#: states in which a service holds memory on its `node` (and on `target` while moving)
OCCUPYING = frozenset({S.STARTED, S.STARTING, S.STOPPING, S.MIGRATING, S.RELOCATING})
#: states with an action in flight
BUSY = frozenset({S.STARTING, S.STOPPING, S.MIGRATING, S.RELOCATING})
#: states that need a host
NEEDS_HOST = frozenset({S.STOPPED, S.DISABLED, S.WAITING, S.RECOVERING})
#: host states that report what runs on them
REPORTING = frozenset({H.ONLINE, H.MAINTENANCE})


def _busy(s: ServiceStatus) -> Refusal:
    """A command for a busy service: queued (applied when it settles), or refused when one
    is already waiting."""
    if s.queued is None:
        return Refusal(R.BUSY, f"{s.state.value}: applied when it settles")
    return Refusal(R.BUSY, f"{s.state.value}, and command {s.queued.id} is already waiting")


class IllegalTransition(RuntimeError):
    """A bug in the engine: a state change the tables do not allow."""


def tick(snapshot: Snapshot, now: float) -> Decision:
    """Decide what to do now. Pure: the same snapshot and time give the same decision."""
    return _Tick(snapshot, now).run()


class _Tick:
    def __init__(self, snap: Snapshot, now: float) -> None:
        prev = snap.status
        self.snap = snap
        self.now = now
        self.cfg = snap.settings
        self.obs = snap.hosts
        self.conf = snap.services
        self.hosts: dict[str, HostStatus] = dict(prev.hosts)
        self.svcs: dict[str, ServiceStatus] = dict(prev.services)
        self.active: set[str] = set(prev.active_services())
        self.pending: dict[str, Pending] = dict(prev.pending)
        self.next_id = prev.next_id
        self.alarm = prev.alarm
        self.storm = prev.storm
        self.fence_hold_until = prev.fence_hold_until
        self.rebalance_since = prev.rebalance_since
        self.actions: list[Action] = []
        self.log: list[str] = []
        self.replies: list[Reply] = []
        self.transitions: list[Transition] = []
        #: hosts that became usable this tick (returned, left maintenance, new)
        self.joined: set[str] = set()
        #: services the engine placed whose start was confirmed this tick: a better host may
        #: have joined while they were starting, so failback is checked for them too
        self.started_now: set[str] = set()
        self._usage: Usage | None = None
        self._tiers: dict[tuple[str | None, frozenset[str]], Tiers] = {}
        self._needs: dict[tuple[str, ...], frozenset[str]] = {}
        silent_after = self.cfg.silent_after_s()
        self.fresh: dict[str, bool] = {
            name: o.last_heartbeat is not None and now - o.last_heartbeat <= silent_after
            for name, o in self.obs.items()
        }
        #: why the console's own view of heartbeats cannot tell silent hosts now ("" if it can)
        self.blind = self._view_gap()

    def prepare(self) -> None:
        """Phases 1-4: what the engine knows before it applies commands (see `Rulebook`)."""
        self._sync_services()
        self._results()
        self._hosts()
        self._reports()

    def run(self) -> Decision:
        self.prepare()
        self._commands()
        queue = self._desired()
        self._place(queue)
        self._moves()
        self._rebalance()
        status = Status(
            hosts=self.hosts,
            services=self.svcs,
            pending=self.pending,
            next_id=self.next_id,
            alarm=self.alarm,
            storm=self.storm,
            fence_hold_until=self.fence_hold_until,
            rebalance_since=self.rebalance_since,
            active=frozenset(self.active),
        )
        return Decision(
            status=status,
            actions=tuple(self.actions),
            log=tuple(self.log),
            replies=tuple(self.replies),
            transitions=tuple(self.transitions),
        )

    # --- the transition functions ----------------------------------------------------------

    def _service_to(
        self,
        name: str,
        state: ServiceState,
        reason: str,
        *,
        cause: str = "",
        room: MadeRoom | None = None,
        **changes: Any,
    ) -> None:
        """The one place a service changes: validated against the table, logged. `cause`:
        the typed label of what caused it (a health check, a save), and `room` (a stop to make
        room, and its result), for the event log."""
        old = self.svcs[name]
        if state is not old.state:
            if state not in SERVICE_TRANSITIONS[old.state]:
                raise IllegalTransition(f"{name}: {old.state} -> {state} ({reason})")
            self._record(Subject.SERVICE, name, old.state, state, reason, cause, room)
            changes["since"] = self.now
            changes.setdefault("lost_at", None)
            if state in (S.STARTED, S.STOPPED, S.DISABLED, S.FAILED):
                changes.setdefault("outage", False)  # the outage is over for it
            if state is S.STARTED:
                changes["last_node"] = changes.get("node", old.node)
        elif changes.get("node", old.node) != old.node:
            changes["since"] = self.now
            if state is S.STARTED:
                changes["last_node"] = changes["node"]
        self._put(name, replace(old, state=state, reason=reason, **changes))

    def _put(self, name: str, new: ServiceStatus) -> None:
        old = self.svcs.get(name)
        if self._usage is not None:
            if old is not None:
                self._count(name, old, -1)
            self._count(name, new, 1)
        self.svcs[name] = new
        if _is_active(new):
            self.active.add(name)
        else:
            self.active.discard(name)

    def _host_to(self, name: str, state: HostState, reason: str, **changes: Any) -> None:
        old = self.hosts[name]
        if state is not old.state:
            if state not in HOST_TRANSITIONS[old.state]:
                raise IllegalTransition(f"host {name}: {old.state} -> {state} ({reason})")
            self._record(Subject.HOST, name, old.state, state, reason)
            changes["since"] = self.now
            if state is H.ONLINE:
                self.joined.add(name)
        self.hosts[name] = replace(old, state=state, reason=reason, **changes)
        self._tiers.clear()

    def _record(
        self,
        kind: Subject,
        name: str,
        old: HostState | ServiceState | None,
        new: HostState | ServiceState,
        reason: str,
        cause: str = "",
        room: MadeRoom | None = None,
    ) -> None:
        self.transitions.append(Transition(kind, name, old, new, reason, cause, room))
        label = f"host {name}" if kind is Subject.HOST else name
        self.log.append(f"{label}: {old.value if old else 'new'} -> {new.value} ({reason})")

    def _emit(
        self, kind: PendingKind, subject: str, host: str, make: Callable[[str], Action]
    ) -> str:
        self.next_id += 1
        action_id = f"{self.snap.id_prefix}{self.next_id}"
        fencing = kind in (K.FENCE, K.FENCE_STATUS)
        timeout = self.cfg.fence_timeout_s if fencing else self.cfg.action_timeout_s
        self.pending[action_id] = Pending(kind, subject, host, self.now + timeout)
        self.actions.append(make(action_id))
        return action_id

    # --- helpers ---------------------------------------------------------------------------

    def _domain(self, cfg: ServiceConfig) -> Domain | None:
        return None if cfg.domain is None else self.snap.domains.get(cfg.domain)

    def _usable(self, host: str, cfg: ServiceConfig) -> bool:
        hs = self.hosts.get(host)
        return hs is not None and hs.state is H.ONLINE and not self._missing(cfg, host)

    def _storage(self, cfg: ServiceConfig) -> frozenset[str]:
        """The shared file systems `cfg`'s disks are on (their mount points)."""
        found = self._needs.get(cfg.disks)
        if found is None:
            found = frozenset(
                mp
                for mp in self.snap.shared_mounts
                for d in cfg.disks
                if d.startswith(mp.rstrip("/") + "/")
            )
            self._needs[cfg.disks] = found
        return found

    def _missing(self, cfg: ServiceConfig, host: str) -> list[str]:
        """The shared file systems `cfg` needs that `host` has not mounted (sorted)."""
        needs = self._storage(cfg)
        if not needs:
            return []
        o = self.obs.get(host)
        mounted = None if o is None else o.mounted
        return [] if mounted is None else sorted(needs - mounted)

    def _candidate_tiers(self, cfg: ServiceConfig) -> Tiers:
        needs = self._storage(cfg)
        key = (cfg.domain, needs)
        found = self._tiers.get(key)
        if found is None:
            usable = sorted(
                n
                for n, h in self.hosts.items()
                if h.state is H.ONLINE and not self._missing(cfg, n)
            )
            found = tiers(self._domain(cfg), usable)
            self._tiers[key] = found
        return found

    def _count(self, name: str, s: ServiceStatus, sign: int) -> None:
        assert self._usage is not None
        if s.state not in OCCUPYING or s.node is None:
            return
        cfg = self.conf.get(name)
        if cfg is None:
            return
        self._usage.add(s.node, cfg, sign, stopping=s.state is S.STOPPING)
        if s.target is not None and s.state in (S.MIGRATING, S.RELOCATING):
            self._usage.add(s.target, cfg, sign)

    def usage(self) -> Usage:
        """Memory use per host, computed on first need, then kept up to date by `_put`."""
        if self._usage is None:
            caps: dict[str, int] = {}
            cpus: dict[str, int] = {}
            vcpus: dict[str, int] = {}
            conf = self.conf
            for name, o in self.obs.items():
                known = sum(conf[g].memory_mb for g in o.running if g in conf)
                overhead = max(0, o.memory_total_mb - o.memory_free_mb - known)
                caps[name] = o.memory_total_mb - overhead
                cpus[name] = o.cpus
                ratio = self.cfg.cpu_overcommit if o.cpu_overcommit is None else o.cpu_overcommit
                limit = vcpu_limit(o.cpus, ratio)
                if limit is not None:
                    vcpus[name] = limit
            # one pass with local sums (as `_count` would add them one by one: 10,000
            # guests are counted every tick the rebalancer or a placement looks)
            mem: dict[str, int] = {}
            cpu: dict[str, int] = {}
            count: dict[str, int] = {}
            stopping: dict[str, int] = {}
            stopping_cpu: dict[str, int] = {}
            moving = (S.MIGRATING, S.RELOCATING)
            for name, s in self.svcs.items():
                state, node = s.state, s.node
                if state not in OCCUPYING or node is None:
                    continue
                c = conf.get(name)
                if c is None:
                    continue
                m, n = c.memory_mb, c.cpus
                mem[node] = mem.get(node, 0) + m
                cpu[node] = cpu.get(node, 0) + n
                count[node] = count.get(node, 0) + 1
                if state is S.STOPPING:
                    stopping[node] = stopping.get(node, 0) + m
                    stopping_cpu[node] = stopping_cpu.get(node, 0) + n
                target = s.target
                if target is not None and state in moving:
                    mem[target] = mem.get(target, 0) + m
                    cpu[target] = cpu.get(target, 0) + n
                    count[target] = count.get(target, 0) + 1
            self._usage = Usage(
                mem_cap=caps,
                cpu_cap=cpus,
                vcpu_cap=vcpus,
                mem=mem,
                cpu=cpu,
                count=count,
                stopping=stopping,
                stopping_cpu=stopping_cpu,
            )
        return self._usage

    def _on_hosts(self, hosts: set[str]) -> dict[str, list[str]]:
        """Services touching each of `hosts` (node, target or suspect), sorted by name."""
        out: dict[str, list[str]] = {h: [] for h in hosts}
        for name, s in self.svcs.items():
            for h in {s.node, s.target, *s.suspects}:
                if h in out:
                    out[h].append(name)
        for names in out.values():
            names.sort()
        return out

    def _view_gap(self) -> str:
        """Why no host may be declared silent or fenced now: the console's own view of the
        heartbeats started afresh less than a liveness window ago, or lags too far behind."""
        window = self.cfg.silent_after_s()
        since = self.snap.view_since
        if since is not None and self.now - since < window:
            return (
                "the console's view of heartbeats started afresh: no host is declared silent "
                f"or fenced before it has {window:g}s of data"
            )
        lag = self.snap.ingest_lag_s
        if lag > self.cfg.max_ingest_lag_s:
            return (
                "the console is behind on its heartbeats by more than "
                f"{self.cfg.max_ingest_lag_s:g}s: no host is declared silent or fenced until "
                "it catches up"
            )
        return ""

    def _acknowledged(self, o: HostObservation) -> bool:
        ack = o.acknowledged_down_at
        return ack is not None and (o.last_heartbeat is None or ack > o.last_heartbeat)

    # --- 1. services -----------------------------------------------------------------------

    def _sync_services(self) -> None:
        conf = self.conf
        for name in sorted(self.svcs.keys() - conf.keys()):
            del self.svcs[name]
            self.active.discard(name)
            self.log.append(f"{name}: removed from the configuration; forgotten")
        for name in sorted(conf.keys() - self.svcs.keys()):
            c = conf[name]
            desired = c.desired
            if c.node is not None and c.node in self.obs and desired is Desired.STARTED:
                state, node, reason = S.STARTED, c.node, f"adopted, running on {c.node}"
            elif desired is Desired.DISABLED:
                state, node, reason = S.DISABLED, None, "new, disabled"
            else:
                if desired is Desired.STARTED and not c.autostart:
                    desired = Desired.STOPPED
                state, node, reason = S.STOPPED, None, "new"
            assert state in NEW_SERVICE_STATES
            self._record(Subject.SERVICE, name, None, state, reason)
            last = c.node if c.node in self.obs else None
            self._put(
                name,
                ServiceStatus(
                    state, desired, node=node, since=self.now, reason=reason, last_node=last
                ),
            )

    # --- 2. results ------------------------------------------------------------------------

    def _results(self) -> None:
        results: list[tuple[str, Pending, ActionResult]] = []
        for r in self.snap.results:
            p = self.pending.pop(r.action_id, None)
            if p is None:
                self.log.append(f"ignored result of unknown or stale action {r.action_id}")
                continue
            results.append((r.action_id, p, r))
        for action_id in sorted(a for a, p in self.pending.items() if p.deadline <= self.now):
            p = self.pending.pop(action_id)
            if p.kind is K.FENCE:
                self._fence_lost(p)
            elif p.kind in (K.START, K.STOP, K.MIGRATE, K.RELOCATE):
                self._result_lost(action_id, p)
            else:
                results.append((action_id, p, ActionResult(action_id, False, "no result in time")))
        for action_id, p, r in results:
            self._result(action_id, p, r)

    def _fence_lost(self, p: Pending) -> None:
        """No result of a fence in time: ask the same device whether the host is off."""
        name = p.subject
        hs = self.hosts.get(name)
        if hs is None or hs.state is not H.FENCING:
            return
        self._emit(K.FENCE_STATUS, name, name, partial(FenceStatus, host=name))
        self._host_to(
            name,
            H.FENCING,
            f"no result of fence attempt {hs.fence_failures + 1} in "
            f"{self.cfg.fence_timeout_s:g}s: asking its fence device for the power state",
        )

    def _result_lost(self, action_id: str, p: Pending) -> None:
        """No result in time: what became of the action is unknown, not failed. The guest
        stays bound to the hosts it was sent to; their reports decide (`_unknown`)."""
        name = p.subject
        s = self.svcs.get(name)
        if s is None or s.action != action_id:
            self.log.append(f"{name}: no result of stale action {action_id}; ignored")
            return
        hosts = " and ".join(h for h in (s.node, s.target) if h is not None)
        why = (
            f"no result of {p.kind.value} in {self.cfg.action_timeout_s:g}s: unknown, "
            f"waiting for the reports of {hosts}"
        )
        self.log.append(f"{name}: {why}")
        self._service_to(name, s.state, why, action=None, lost_at=self.now)

    def _result(self, action_id: str, p: Pending, r: ActionResult) -> None:
        msg = r.message or ("ok" if r.ok else "failed")
        if p.kind in (K.FENCE, K.FENCE_STATUS):
            hs = self.hosts.get(p.subject)
            if hs is None or hs.state is not H.FENCING:
                return
            if r.ok:
                how = "fence ok" if p.kind is K.FENCE else "fence device reports it off"
                self._host_to(p.subject, H.FENCED, f"{how}: {msg}", fence_failures=0)
                self._host_fenced(p.subject)
            else:
                if p.kind is K.FENCE_STATUS:
                    msg = f"after a lost fence result, power status: {msg}"
                failures = hs.fence_failures + 1
                delay = self.cfg.fence_backoff_s(failures)
                self._host_to(
                    p.subject,
                    H.UNREACHABLE,
                    f"fence failed ({msg}); retry in {delay:g}s",
                    fence_failures=failures,
                    next_fence_at=self.now + delay,
                )
            return
        if p.kind is K.STRAY:
            self.log.append(f"{p.subject}: stray copy on {p.host} stop: {msg}")
            return
        name = p.subject
        s = self.svcs.get(name)
        if s is None or s.action != action_id:
            self.log.append(f"{name}: ignored stale result of {action_id}")
            return
        done: dict[str, Any] = {"action": None}
        if p.kind is K.START:
            if r.ok:
                self._service_to(name, S.STARTED, f"started on {s.node}", **done)
                self.started_now.add(name)
            else:
                self._failure(name, p.host, f"start on {p.host} failed: {msg}")
        elif p.kind is K.STOP:
            if s.hung:
                self._hung_stopped(name, s, p.host, r, msg)
            elif r.ok:
                if s.desired is Desired.STARTED and r.saved:
                    self._service_to(
                        name,
                        S.WAITING,
                        f"saved on {s.node} {s.reason.removeprefix('saving it ')}; resumes "
                        "there when room returns",
                        node=None,
                        saved_on=s.node,
                        cause="saved",
                        room=MadeRoom(p.host, saved=True),
                        **done,
                    )
                elif s.desired is Desired.STARTED:
                    why = f"stopped on {s.node} to make room"
                    if r.message:
                        why += f" ({r.message})"
                    room = MadeRoom(p.host, saved=False, not_saved=r.message)
                    self._service_to(name, S.WAITING, why, node=None, room=room, **done)
                else:
                    self._settle_stopped(name, f"stopped on {s.node}", node=None, **done)
            else:
                self._still_running(name, f"stop on {s.node} failed: {msg}", **done)
        elif r.ok:  # a migration or a relocation arrived
            verb = "migrated" if p.kind is K.MIGRATE else "relocated"
            self._service_to(
                name,
                S.STARTED,
                f"{verb} {s.node} -> {s.target}",
                node=s.target,
                target=None,
                **self._arrived(s),
                **done,
            )
        elif p.kind is K.MIGRATE:
            why = f"migration to {s.target} failed ({msg}); still running on {s.node}"
            self._still_running(name, why, target=None, **done)
        else:
            # a relocation failed; where it is now is not known: wait for both hosts to report
            # before starting
            source, target = s.node, s.target or p.host
            self._service_to(name, s.state, s.reason, node=target, target=None, **done)
            suspects = tuple(sorted({h for h in (source, target) if h is not None}))
            self._failure(name, target, f"relocation failed: {msg}", suspects)

    def _runs_on(self, name: str, s: ServiceStatus, host: str, why: str, **changes: Any) -> None:
        """``host`` reports the guest running: it is started there; the hosts still silent
        that it may also run on stay suspects."""
        suspects = self._silent_rest(s, host)
        self._service_to(name, S.STARTED, why, node=host, suspects=suspects, **changes)

    def _still_running(self, name: str, why: str, **changes: Any) -> None:
        """An action on a running guest failed and left it running: tried again later."""
        self._service_to(name, S.STARTED, why, retry_at=self.now + self.cfg.retry_s, **changes)

    def _hung_stopped(
        self, name: str, s: ServiceStatus, host: str, r: ActionResult, msg: str
    ) -> None:
        """The destroy of a guest that failed a health check finished: on success its
        recovery policy follows (restart in place first), as for a crash."""
        if r.ok:
            self._failure(name, host, s.hung_reason, cause=s.hung)
            return
        why = f"{s.hung_reason}; destroying it failed ({msg}), tried again in {self.cfg.retry_s:g}s"
        self._still_running(name, why, action=None, hung="", hung_reason="")

    def _hung(self, name: str, s: ServiceStatus, failure: HealthFailure) -> None:
        """A running guest failed a health check (QEMU alive, the guest or its application
        not): destroy it at once; its recovery policy follows when it is down."""
        node = s.node
        assert node is not None
        why = f"{failure.describe()} on {node}"
        streak: dict[str, Any] = {}
        if self.now - s.since >= self.cfg.stable_after_s:  # it ran long enough: a new streak
            streak = {"restarts": (), "failed_nodes": ()}
        aid = self._emit(
            K.STOP, name, node, partial(Stop, service=name, host=node, reason=StopReason.HUNG)
        )
        self._service_to(
            name,
            S.STOPPING,
            f"{why}: destroying it for its recovery policy",
            cause=failure.check.value,
            action=aid,
            hung=failure.check.value,
            hung_reason=why,
            **streak,
        )

    @staticmethod
    def _arrived(s: ServiceStatus) -> dict[str, Any]:
        """A move that succeeded: a return or failback is done (a drain keeps its home)."""
        return {"failback": False, "home": None} if s.failback else {}

    def _settle_stopped(self, name: str, reason: str, **changes: Any) -> None:
        s = self.svcs[name]
        state = S.DISABLED if s.desired is Desired.DISABLED else S.STOPPED
        # a person stopped it: its next start is a fresh boot, not a resume of a saved state
        self._service_to(name, state, reason, **{"saved_on": None, **changes})

    def _failure(
        self,
        name: str,
        node: str,
        reason: str,
        suspects: tuple[str, ...] = (),
        *,
        cause: str = "",
    ) -> None:
        """The guest stopped without being asked on `node` (`cause`: the health check that
        failed, if one did): apply its recovery policy."""
        s = self.svcs[name]
        c = self.conf[name]
        clear: dict[str, Any] = {
            "action": None,
            "target": None,
            "node": node,
            "hung": "",
            "hung_reason": "",
            "cause": cause,
        }
        if s.desired is not Desired.STARTED:
            self._settle_stopped(name, reason, **clear)
            return
        if c.recovery is Recovery.DISABLE:
            self._service_to(
                name,
                S.DISABLED,
                f"{reason}; recovery policy: disable",
                desired=Desired.DISABLED,
                **clear,
            )
            return
        failed_nodes, restarts = s.failed_nodes, s.restarts
        if s.state is S.STARTED and self.now - s.since >= self.cfg.stable_after_s:
            failed_nodes, restarts = (), ()
        if c.restart_window_s > 0:
            restarts = tuple(t for t in restarts if self.now - t < c.restart_window_s)
        if c.recovery is Recovery.RESTART and (
            c.max_restarts == 0 or len(restarts) < c.max_restarts
        ):
            count = f"{len(restarts) + 1}/{c.max_restarts or 'unlimited'}"
            delay = self.cfg.restart_backoff_s(len(restarts))
            self._service_to(
                name,
                S.RECOVERING,
                f"{reason}; restart {count} on {node}" + (f" in {delay:g}s" if delay else ""),
                restarts=(*restarts, self.now),
                failed_nodes=failed_nodes,
                restart_on=node,
                suspects=suspects,
                retry_at=self.now + delay,
                **clear,
            )
            return
        failed_nodes = (*failed_nodes, node)
        if len(failed_nodes) > c.max_relocations:
            self._service_to(
                name,
                S.FAILED,
                f"{reason}; failed on {len(failed_nodes)} hosts in a row "
                f"({', '.join(failed_nodes)}), more than max_relocations={c.max_relocations}",
                restarts=restarts,
                failed_nodes=failed_nodes,
                restart_on=None,
                **clear,
            )
            return
        self._service_to(
            name,
            S.RECOVERING,
            f"{reason}; relocating away from {node}",
            restarts=restarts,
            failed_nodes=failed_nodes,
            restart_on=None,
            suspects=suspects,
            **clear,
        )

    # --- 3. hosts --------------------------------------------------------------------------

    def _hosts(self) -> None:
        for name in sorted(self.hosts.keys() - self.obs.keys()):
            del self.hosts[name]
            self.log.append(f"host {name}: removed from the configuration; forgotten")
        went_silent: list[str] = []
        for name in sorted(self.obs):
            o = self.obs[name]
            fresh = self.fresh[name]
            drain = o.maintenance or o.shutting_down
            up = H.MAINTENANCE if drain else H.ONLINE
            hs = self.hosts.get(name)
            if hs is None:
                state = up if fresh else H.OFFLINE
                assert state in NEW_HOST_STATES
                self._record(Subject.HOST, name, None, state, "new")
                self.hosts[name] = HostStatus(
                    state, since=self.now, reason="new", heard=o.last_heartbeat is not None
                )
                if state is H.ONLINE:
                    self.joined.add(name)
                continue
            if o.last_heartbeat is not None and not hs.heard:
                self.hosts[name] = hs = replace(hs, heard=True)
            state = hs.state
            if state in REPORTING:
                if fresh:
                    if state is not up:
                        why = "shutting down" if o.shutting_down else "maintenance"
                        self._host_to(name, up, why if drain else "maintenance over")
                else:
                    went_silent.append(name)
            elif state is H.UNREACHABLE:
                if fresh:
                    self._host_to(name, up, "heartbeats again", fence_failures=0)
                    self._host_returned(name)
            elif state is H.FENCED:
                if fresh and o.last_heartbeat is not None and o.last_heartbeat > hs.since:
                    self._host_to(name, up, "heartbeats again after fencing")
            elif state is H.OFFLINE and fresh:
                self._host_to(name, up, "heartbeats again", shut_down=False)
        if not self.blind:
            for name in went_silent:
                self._host_silent(name)
        self._fencing()
        self._outage()

    def _outage(self) -> None:
        """No host reports (each one the cluster heard from is silent, fenced or off): the whole
        cluster lost power, or the console is cut off from every host. Guests with autostart
        off that should run are marked: if the cluster must start one again when the hosts
        return (it is not found running), it stays stopped until a person starts it."""
        if any(h.state in REPORTING for h in self.hosts.values()):
            return
        if not any(h.heard for h in self.hosts.values()):
            return
        for name in sorted(self.svcs):
            s = self.svcs[name]
            c = self.conf.get(name)
            if c is None or c.autostart or s.outage or s.desired is not Desired.STARTED:
                continue
            if s.state in (S.STOPPED, S.DISABLED, S.FAILED):
                continue
            self.log.append(f"{name}: no host of the cluster reports (autostart off)")
            self._put(name, replace(s, outage=True))

    def _host_silent(self, name: str) -> None:
        """A reporting host stopped heartbeating: its guests may still run there."""
        silent_after = self.cfg.silent_after_s()
        o = self.obs[name]
        since = "never" if o.last_heartbeat is None else f"{self.now - o.last_heartbeat:g}s ago"
        for svc in self._on_hosts({name})[name]:
            s = self.svcs[svc]
            touched = s.state in OCCUPYING or (s.state is S.RECOVERING and name in s.suspects)
            if not touched:
                continue
            if s.desired is not Desired.STARTED:
                # it may still run there: remember, in case someone wants it running again
                self._settle_stopped(
                    svc, f"host {name} went silent", action=None, target=None, suspects=(name,)
                )
                continue
            # every host involved stays a suspect: a silent one until it is fenced or returns,
            # one still reporting until it reports (a move in flight may have left it there)
            suspects = tuple(sorted({h for h in (s.node, s.target, *s.suspects) if h}))
            self._service_to(
                svc,
                S.FENCE,
                f"host {name} unreachable: waiting for it to be fenced",
                action=None,
                target=None,
                suspects=suspects,
            )
        reason = f"missed heartbeats (last {since}, limit {silent_after:g}s)"
        if self._needs_fence(name):
            self._host_to(name, H.UNREACHABLE, reason, fence_failures=0, next_fence_at=self.now)
        else:
            shut = o.shutting_down
            why = "shut down cleanly" if shut else f"{reason}; no guests to recover"
            self._host_to(name, H.OFFLINE, why, shut_down=shut)

    def _needs_fence(self, host: str) -> bool:
        """Some guest that should run may still be running on the silent `host`, or the host
        is in the shared storage (the others' dlm waits for it to be fenced; a clean shutdown
        leaves the lockspaces first)."""
        o = self.obs[host]
        if o.shared_storage and not o.shutting_down:
            return True
        # every guest, settled ones too: one running elsewhere may have a copy left here
        for s in self.svcs.values():
            if host in s.suspects and (s.state is S.FENCE or s.desired is Desired.STARTED):
                return True
        return False

    def _fencing(self) -> None:
        """Fence unreachable hosts, unless the console cannot trust its view, or too many
        hosts are late at once (a fencing storm), or a storm cleared a moment ago."""
        heard = [n for n, h in self.hosts.items() if h.heard]
        late_after = self.cfg.late_after_s()
        late = sorted(
            n
            for n in heard
            if (lh := self.obs[n].last_heartbeat) is None or self.now - lh > late_after
            if self.hosts[n].state is not H.FENCED
            and not self.hosts[n].shut_down
            and not self.obs[n].shutting_down  # announced: it leaves on purpose
            and not self._acknowledged(self.obs[n])
        )
        silent = {n for n in late if not self.fresh.get(n)}
        storm = 2 * len(late) > len(heard)
        window = self.cfg.silent_after_s()
        if storm:
            self.storm = True
        elif self.storm:
            self.storm = False
            self.fence_hold_until = self.now + window
        alarm = held = ""
        if self.blind:
            alarm = held = self.blind
        elif storm:
            alarm = (
                f"fencing storm: {len(late)} of {len(heard)} hosts late or silent at once "
                f"({', '.join(late)}); fencing nobody (the console may be the one cut off)"
            )
            held = "fencing storm (see alarm)"
        elif self.now < self.fence_hold_until:
            alarm = held = (
                f"a fencing storm just cleared: fencing nobody for {window:g}s, so hosts "
                "returning a moment apart are not fenced"
            )
        if alarm != self.alarm:
            self.log.append(f"alarm: {alarm}" if alarm else "alarm cleared")
            self.alarm = alarm
        for name in sorted(self.hosts):
            hs = self.hosts[name]
            if (
                hs.state is H.OFFLINE
                and name in silent
                and not self.blind
                and self._needs_fence(name)
            ):
                self._host_to(name, H.UNREACHABLE, "a guest that may still run here must start")
                hs = self.hosts[name]
            if hs.state not in (H.UNREACHABLE, H.FENCING):
                continue
            o = self.obs[name]
            if self._acknowledged(o):
                self._host_to(name, H.FENCED, "a person acknowledged it is down")
                self._host_fenced(name)
                continue
            if hs.state is H.FENCING:
                continue
            if not self._needs_fence(name):
                self._host_to(name, H.OFFLINE, "no guests to recover any more")
                continue
            if held:
                why = f"not fenced: {held}"
            elif not o.fence_device:
                why = "no fence device: acknowledge that it is down to recover its guests"
            elif self.now < hs.next_fence_at:
                continue
            else:
                self._emit(K.FENCE, name, name, partial(Fence, host=name))
                self._host_to(name, H.FENCING, f"fence attempt {hs.fence_failures + 1}")
                continue
            if hs.reason != why:
                self._host_to(name, H.UNREACHABLE, why)

    def _host_fenced(self, host: str) -> None:
        """`host` is confirmed off: its guests are no longer running there."""
        for name in self._on_hosts({host})[host]:
            s = self.svcs[name]
            if host not in s.suspects:
                continue
            rest = tuple(h for h in s.suspects if h != host)
            if s.state is S.FENCE and all(self._reporting(h) for h in rest):
                # hosts still reporting that were involved must report before a start
                self._service_to(name, S.RECOVERING, f"host {host} fenced", suspects=rest)
            else:
                self._service_to(name, s.state, s.reason, suspects=rest)

    def _host_returned(self, host: str) -> None:
        """`host` heartbeats again before it was fenced: believe its report."""
        running = self.obs[host].running
        for name in self._on_hosts({host})[host]:
            s = self.svcs[name]
            if host not in s.suspects:
                continue
            if s.state is S.RECOVERING:
                continue  # its next report decides (`_may_start`, `_found_running`)
            if s.state is not S.FENCE:
                # its report is believed: a copy there is a stray (`_reports`)
                self._service_to(name, s.state, s.reason, suspects=self._silent_rest(s, host))
                continue
            if name in running:
                self._runs_on(name, s, host, f"host {host} is back and still runs it")
                continue
            rest = tuple(h for h in s.suspects if h != host)
            if not all(self._reporting(h) for h in rest):
                self._service_to(name, S.FENCE, s.reason, suspects=rest)
            else:
                self._service_to(
                    name, S.RECOVERING, f"host {host} is back without it", suspects=rest
                )

    def _reporting(self, host: str) -> bool:
        hs = self.hosts.get(host)
        return hs is not None and hs.state in REPORTING

    def _silent_rest(self, s: ServiceStatus, host: str) -> tuple[str, ...]:
        """The guest's suspects other than `host` that are silent and not fenced: a copy may
        still run there, so they stay suspects wherever the guest runs now."""
        return tuple(h for h in s.suspects if h != host and not self._reporting(h))

    def _silent_elsewhere(self, s: ServiceStatus) -> tuple[str, ...]:
        """Silent, unfenced suspects of a running guest other than its own host: a copy may
        still run there, so the guest must not start anywhere else (a move is a start on the
        target) until each is fenced, acknowledged down, or reports again (a host no longer
        in the cluster is not one, as in `_may_start`)."""
        return tuple(h for h in self._silent_rest(s, s.node or "") if h in self.hosts)

    def _held_by_suspects(self, s: ServiceStatus) -> Refusal | None:
        silent = self._silent_elsewhere(s)
        if not silent:
            return None
        return Refusal(
            R.RECOVERING,
            f"may still run on silent {', '.join(silent)} (not fenced): it moves once "
            f"{'they are' if len(silent) > 1 else 'that host is'} fenced, acknowledged down "
            "or reporting again",
        )

    # --- 4. reports ------------------------------------------------------------------------

    def _reports(self) -> None:
        for name in sorted(self.active):
            s = self.svcs[name]
            if s.lost_at is not None and s.state in BUSY:
                self._unknown(name, s, s.lost_at)
        # Per host, by set differences (a loop over every service and every reported guest
        # was most of the engine's time at 10,000 guests): the guests started there that it no
        # longer reports (crashed), those it reports unhealthy, and the services it runs that
        # do not occupy it (anomalies; guests that are no service are not Haven's).
        obs, fresh, svcs = self.obs, self.fresh, self.svcs
        started_on: dict[str, set[str]] = {}
        occupying_on: dict[str, set[str]] = {}
        for name, s in svcs.items():
            if s.node is None or s.state not in OCCUPYING:
                continue
            occupying_on.setdefault(s.node, set()).add(name)
            if s.state is S.STARTED:
                started_on.setdefault(s.node, set()).add(name)
        crashed: list[str] = []
        hung: list[str] = []
        for host, names in started_on.items():
            o = obs.get(host)
            if o is None or not fresh[o.name] or o.last_heartbeat is None:
                continue
            seen = o.last_heartbeat
            crashed += [n for n in names - o.running if seen > svcs[n].since]
            hung += [
                n
                for n in o.unhealthy
                if n in names and n in o.running and seen > svcs[n].since
                and self.now >= svcs[n].retry_at
            ]  # fmt: skip
        for name in sorted(crashed):
            s = self.svcs[name]
            node = s.node
            assert node is not None
            failure = obs[node].unhealthy.get(name)
            if failure is None:
                why, cause = f"crashed on {node} (no longer in its report)", ""
            else:
                why, cause = f"{failure.describe()} on {node}; gone", failure.check.value
            self._failure(name, node, why, s.suspects, cause=cause)
        for name in sorted(hung):
            s = self.svcs[name]
            assert s.node is not None
            self._hung(name, s, obs[s.node].unhealthy[name])

        anomalies = [
            (host, guest)
            for host, hs in self.hosts.items()
            if hs.state in REPORTING
            for guest in obs[host].running - occupying_on.get(host, set())
            if guest in svcs
        ]
        if not anomalies:
            return
        stopping = {(p.subject, p.host) for p in self.pending.values() if p.kind is K.STRAY}
        for host, name in sorted(anomalies):
            self._found_running(host, name, stopping)

    def _report(self, host: str | None, newer_than: float) -> frozenset[str] | None:
        """What `host` reports running, if it reports and its last report is newer than
        `newer_than`; else None."""
        if host is None:
            return None
        o, hs = self.obs.get(host), self.hosts.get(host)
        if o is None or hs is None or hs.state not in REPORTING or not self.fresh.get(host):
            return None
        if o.last_heartbeat is None or o.last_heartbeat <= newer_than:
            return None
        return o.running

    def _unknown(self, name: str, s: ServiceStatus, lost_at: float) -> None:
        """The result of the guest's action was lost: the hosts' own reports decide.

        Reported running on the host it was sent to (the target of a move first), in a report
        newer than the action: that is where it runs. Absent from the reports of every host
        involved for a liveness window after the loss: the failure path, with those hosts as
        suspects, so it never starts elsewhere before they have reported again."""
        sent = s.since
        node, target = s.node, s.target
        waited = self.now - lost_at >= self.cfg.silent_after_s()
        lost = "result lost"
        if s.state is S.STOPPING:
            now_seen = self._report(node, sent)
            if now_seen is not None and name not in now_seen and s.hung and node is not None:
                self._failure(name, node, f"{s.hung_reason} ({lost})", cause=s.hung)
            elif now_seen is not None and name not in now_seen:
                if s.desired is Desired.STARTED:
                    self._service_to(
                        name, S.WAITING, f"{node} reports it stopped ({lost})", node=None
                    )
                else:
                    self._settle_stopped(name, f"{node} reports it stopped ({lost})", node=None)
            elif waited and self._report(node, lost_at) is not None:
                self._service_to(
                    name,
                    S.STARTED,
                    f"{node} still reports it running after a stop ({lost})",
                    retry_at=self.now + self.cfg.retry_s,
                    hung="",
                    hung_reason="",
                )
            return
        for host in (target, node):
            seen = self._report(host, sent)
            if seen is None or name not in seen:
                continue
            if host != target and target is not None:
                # a move may still be under way: the source runs it until it completes
                at_target = self._report(target, lost_at)
                if not waited or at_target is None or name in at_target:
                    continue
            arrived = host == target
            self._service_to(
                name,
                S.STARTED,
                f"{host} reports it running ({lost})",
                node=host,
                target=None,
                retry_at=0.0 if arrived else self.now + self.cfg.retry_s,
                **(self._arrived(s) if arrived else {}),
            )
            if s.state is S.STARTING:
                self.started_now.add(name)
            return
        if not waited:
            return
        involved = tuple(sorted({h for h in (node, target) if h is not None}))
        if any(self._report(h, lost_at) is None for h in involved):
            return
        where = target or node
        assert where is not None
        self._service_to(name, s.state, s.reason, node=where, target=None)
        self._failure(
            name,
            where,
            f"{s.state.value}: no result, and {' and '.join(involved)} do not report it",
            involved,
        )

    def _found_running(self, host: str, name: str, stopping: set[tuple[str, str]]) -> None:
        s = self.svcs[name]
        seen = self.obs[host].last_heartbeat
        if seen is None or seen <= s.since or (name, host) in stopping:
            return  # the report predates the engine's last change, or a stop is in flight
        if s.target == host and s.state in (S.MIGRATING, S.RELOCATING):
            return
        if s.state is S.RECOVERING and host in s.suspects:
            self._runs_on(name, s, host, f"still running on {host}")
            return
        cfg = self.conf[name]
        adoptable = s.state in (S.FENCE, S.RECOVERING, S.WAITING, S.STOPPED)
        if (
            adoptable
            and s.desired is Desired.STARTED
            and self.hosts[host].state is H.ONLINE
            and allowed(self._domain(cfg), host)
        ):
            self._runs_on(name, s, host, f"found running on {host}: adopted", restart_on=None)
            return
        where = f"{s.state.value} on {s.node}" if s.node else s.state.value
        self.log.append(
            f"{name}: found running on {host} where it should not be (engine: {where}); "
            "stopping that copy"
        )
        self._emit(K.STRAY, name, host, lambda i: Stop(i, name, host, StopReason.STRAY))
        stopping.add((name, host))

    # --- 5. commands -----------------------------------------------------------------------

    def _commands(self) -> None:
        for name in sorted(self.active):
            s = self.svcs[name]
            if s.queued is not None and s.state not in BUSY:
                cmd = s.queued
                self._put(name, replace(s, queued=None))
                self._command(cmd)
        for cmd in self.snap.commands:
            self._command(cmd)

    def _reply(self, cmd: Command, outcome: ReplyOutcome, code: str = "", why: str = "") -> None:
        self.replies.append(Reply(cmd.id, cmd.service, outcome, code, why))
        verb = f"{cmd.kind.value}" + (f" {cmd.node}" if cmd.node else "")
        self.log.append(
            f"{cmd.service}: command {cmd.id} ({verb}) {outcome.value}"
            + (f": {why}" if why else "")
        )

    def _command(self, cmd: Command) -> None:
        name = cmd.service
        s = self.svcs.get(name)
        if s is None:
            self._reply(cmd, ReplyOutcome.REFUSED, R.UNKNOWN_SERVICE, "no such service")
            return
        if s.state in BUSY:
            busy = _busy(s)
            if s.queued is None:
                self._put(name, replace(s, queued=cmd))
                self._reply(cmd, ReplyOutcome.QUEUED, busy.code, busy.reason)
            else:
                self._reply(cmd, ReplyOutcome.REFUSED, busy.code, busy.reason)
            return
        kind = cmd.kind
        refused = ReplyOutcome.REFUSED
        if kind in (CommandKind.MIGRATE, CommandKind.RELOCATE):
            self._move_command(cmd, s)
            return
        if s.state is S.FAILED and kind in (CommandKind.START, CommandKind.STOP):
            self._reply(cmd, refused, R.FAILED, "failed: enable or disable it first")
            return
        # sticky start: a guest a person starts again prefers the host where it last ran
        prefer = s.last_node if s.state in NEEDS_HOST else None
        if kind in (CommandKind.START, CommandKind.ENABLE) and not (
            kind is CommandKind.START and s.desired is Desired.DISABLED
        ):
            refusal = self._admission_refusal(self.conf[name])
            if refusal is not None:
                self._reply(cmd, refused, refusal.code, refusal.reason)
                return
        if kind is CommandKind.START:
            if s.desired is Desired.DISABLED:
                self._reply(cmd, refused, R.DISABLED, "disabled: enable it first")
                return
            self._put(name, replace(s, desired=Desired.STARTED, prefer=prefer))
        elif kind is CommandKind.ENABLE:
            fresh_start: dict[str, Any] = {
                "desired": Desired.STARTED,
                "failed_nodes": (),
                "restarts": (),
                "prefer": prefer,
            }
            if s.state is S.FAILED:
                self._service_to(name, S.STOPPED, "enabled by a person", **fresh_start)
            else:
                self._put(name, replace(s, **fresh_start))
        elif kind is CommandKind.STOP:
            self._put(name, replace(s, desired=Desired.STOPPED, prefer=None))
        elif kind is CommandKind.DISABLE:
            if s.state is S.FAILED:
                self._service_to(name, S.DISABLED, "disabled by a person")
            self._put(name, replace(self.svcs[name], desired=Desired.DISABLED, prefer=None))
        self._reply(cmd, ReplyOutcome.ACCEPTED)

    # --- admission control (console/engine/admission.py) -----------------------------------

    def _counted(self, s: ServiceStatus) -> bool:
        """Does the guest already count as one the cluster must keep running?"""
        return s.desired is Desired.STARTED and s.state is not S.FAILED

    def capacity(self, extra: ServiceConfig | None = None, tolerate: int | None = None) -> Capacity:
        """The failover capacity now (online hosts, the guests that should run), with `extra`
        counted as a guest waiting for a host when it is not counted already."""
        caps, used, loads = self.capacity_inputs(extra)
        k = self.cfg.host_failures_to_tolerate if tolerate is None else tolerate
        return capacity(caps, used, loads, k)

    def capacity_inputs(
        self, extra: ServiceConfig | None = None
    ) -> tuple[dict[str, int], dict[str, int], list[Load]]:
        """What admission control looks at: the online hosts' memory for guests, what guests
        hold there, and the guests that should run (see `capacity`)."""
        usage = self.usage()
        caps = {
            h: usage.mem_cap[h]
            for h, hs in self.hosts.items()
            if hs.state is H.ONLINE and h in usage.mem_cap
        }
        loads: list[Load] = []
        conf, started, failed = self.conf, Desired.STARTED, S.FAILED
        for name, s in self.svcs.items():
            if s.desired is not started or s.state is failed:  # not `_counted`
                continue
            cfg = conf.get(name)
            if cfg is None:
                continue
            host = s.node if s.state in OCCUPYING and s.node in caps else None
            loads.append(Load(name, cfg.memory_mb, cfg.priority, cfg.protected, host))
        used = {h: usage.mem.get(h, 0) for h in caps}
        if extra is not None:
            known = self.svcs.get(extra.name)
            if known is None or not self._counted(known):
                loads.append(Load(extra.name, extra.memory_mb, extra.priority, True, None))
            else:  # a changed configuration of a guest that is counted: in place of the old
                i = next(i for i, g in enumerate(loads) if g.name == extra.name)
                was = loads[i]
                loads[i] = Load(
                    extra.name, extra.memory_mb, extra.priority, extra.protected, was.host
                )
                if was.host is not None:
                    used[was.host] += extra.memory_mb - was.memory_mb
        return caps, used, loads

    def _admission_refusal(self, cfg: ServiceConfig) -> Refusal | None:
        """Why starting (or enabling) `cfg` breaks admission control, or None."""
        if self.cfg.host_failures_to_tolerate <= 0 or not cfg.protected:
            return None
        known = self.svcs.get(cfg.name)
        if known is not None and self._counted(known):
            return None  # already counted: starting it again changes nothing
        if not any(hs.state is H.ONLINE for hs in self.hosts.values()):
            return None  # no picture yet (a cluster being set up): the guest waits anyway
        found = self.capacity(extra=cfg)
        if found.ok:
            return None
        return Refusal(R.ADMISSION, f"admission control: {found.refusal()}")

    def _change_refusal(self, cfg: ServiceConfig) -> Refusal | None:
        """Why changing a counted guest's configuration to `cfg` (more memory, a higher
        priority, protected again) breaks admission control, or None."""
        old = self.conf.get(cfg.name)
        known = self.svcs.get(cfg.name)
        if old is None or known is None or not self._counted(known):
            return None  # not meant to run: an edit starts nothing (a start is checked)
        more = (
            cfg.memory_mb > old.memory_mb
            or cfg.priority > old.priority
            or (cfg.protected and not old.protected)
        )
        if self.cfg.host_failures_to_tolerate <= 0 or not more:
            return None
        if not any(hs.state is H.ONLINE for hs in self.hosts.values()):
            return None
        found = self.capacity(extra=cfg)
        if found.ok:
            return None
        return Refusal(R.ADMISSION, f"admission control: {found.refusal()}")

    def _move_command(self, cmd: Command, s: ServiceStatus) -> None:
        name, node = cmd.service, cmd.node or ""
        live = cmd.kind is CommandKind.MIGRATE
        refusal = self._move_refusal(name, s, node, live)
        if refusal is not None:
            self._reply(cmd, ReplyOutcome.REFUSED, refusal.code, refusal.reason)
            return
        self._move(name, node, live, f"asked by a person (command {cmd.id})")
        # where a person put it stays for the rebalancer's cool-down too
        self._put(name, replace(self.svcs[name], home=None, rebalanced_at=self.now))
        self._reply(cmd, ReplyOutcome.ACCEPTED)

    def _move_refusal(self, name: str, s: ServiceStatus, node: str, live: bool) -> Refusal | None:
        """Why a person's move of settled service `name` to `node` is refused, or None."""
        cfg = self.conf[name]
        if s.state in (S.FENCE, S.RECOVERING):
            return Refusal(R.RECOVERING, f"{s.state.value}: {s.reason}")
        if s.state is not S.STARTED:
            return Refusal(R.NOT_RUNNING, f"not running ({s.state.value})")
        held = self._held_by_suspects(s)
        if held is not None:
            return held
        if node not in self.hosts:
            return Refusal(R.UNKNOWN_NODE, f"no host named {node!r}")
        if node == s.node:
            return Refusal(R.SAME_NODE, f"already running on {node}")
        if live and not cfg.migratable:
            return Refusal(R.NOT_MIGRATABLE, "cannot be live-migrated; relocate it instead")
        hs = self.hosts[node]
        if hs.state is H.MAINTENANCE:
            return Refusal(R.MAINTENANCE, f"{node} is in maintenance")
        if hs.state is not H.ONLINE:
            return Refusal(R.OFFLINE, f"{node} is {hs.state.value}")
        missing = self._missing(cfg, node)
        if missing:
            return Refusal(R.NO_STORAGE, f"{node} does not have {', '.join(missing)} mounted")
        domain = self._domain(cfg)
        if not allowed(domain, node):
            assert domain is not None
            return Refusal(
                R.NOT_ALLOWED, f"{node} is not a member of restricted domain {domain.name}"
            )
        usage = self.usage()
        if not usage.fits(node, cfg):
            return Refusal(R.NO_ROOM, usage.no_room(node, cfg))
        return None

    def _move(self, name: str, node: str, live: bool, why: str, *, failback: bool = False) -> None:
        """Move a running guest; `failback`: a return or failback, tried again if it fails."""
        s = self.svcs[name]
        source = s.node
        assert source is not None
        if live:
            aid = self._emit(K.MIGRATE, name, source, lambda i: Migrate(i, name, source, node))
        else:
            aid = self._emit(K.RELOCATE, name, source, lambda i: Relocate(i, name, source, node))
        state = S.MIGRATING if live else S.RELOCATING
        why = f"{why}: {source} -> {node}"
        self._service_to(name, state, why, target=node, action=aid, failback=failback)

    # --- 6. desired state ------------------------------------------------------------------

    def _desired(self) -> list[str]:
        queue: list[str] = []
        for name in sorted(self.active):
            s = self.svcs[name]
            state = s.state
            if s.desired is Desired.STARTED:
                if state not in NEEDS_HOST:
                    continue
                if self._may_start(s) and s.outage and not self.conf[name].autostart:
                    self._service_to(
                        name,
                        S.STOPPED,
                        "the whole cluster was down and autostart is off: it stays stopped "
                        "until a person starts it",
                        desired=Desired.STOPPED,
                        restart_on=None,
                        action=None,
                        target=None,
                    )
                elif self._may_start(s):
                    queue.append(name)
                elif state is not S.RECOVERING:
                    silent = ", ".join(h for h in s.suspects if not self.fresh.get(h))
                    self._service_to(
                        name, S.FENCE, f"may still run on silent {silent}: waiting for a fence"
                    )
                continue
            if state is S.STARTED:
                if self.now >= s.retry_at and s.node is not None:
                    node = s.node
                    aid = self._emit(K.STOP, name, node, partial(Stop, service=name, host=node))
                    self._service_to(name, S.STOPPING, f"{s.desired.value} by a person", action=aid)
            elif state in (S.WAITING, S.RECOVERING, S.FENCE, S.STOPPED, S.DISABLED):
                # suspects stay: the guest may still run on a silent host
                self._settle_stopped(name, f"{s.desired.value} by a person", restart_on=None)
        return queue

    def _may_start(self, s: ServiceStatus) -> bool:
        """A RECOVERING guest starts only once every suspect host reported it is not there,
        and not before its restart backoff has passed."""
        if s.state is S.RECOVERING and self.now < s.retry_at:
            return False
        for host in s.suspects:
            hs = self.hosts.get(host)
            o = self.obs.get(host)
            if hs is None or o is None:
                continue
            if hs.state is H.FENCED:
                continue
            if hs.state not in REPORTING or o.last_heartbeat is None:
                return False
            if o.last_heartbeat <= s.since:
                return False
        return True

    # --- 7. placement ----------------------------------------------------------------------

    def _place(self, queue: list[str]) -> None:
        if not queue:
            return
        conf = self.conf
        queue.sort(key=lambda n: (-conf[n].priority, n))
        usage = self.usage()
        victims: dict[str, list[ServiceConfig]] | None = None
        taken: set[str] = set()
        for name in queue:
            s, cfg = self.svcs[name], conf[name]
            exclude = set(s.failed_nodes)
            host = self._pick(s, cfg, exclude)
            if host is not None:
                self._start(name, host)
                continue
            if victims is None:
                victims = self._victims()
            plan = preemption_plan(self._candidate_tiers(cfg), cfg, usage, victims, exclude, taken)
            if plan is not None:
                for v in plan.victims:
                    vs = self.svcs[v]
                    assert vs.node is not None
                    node = vs.node
                    save = conf[v].saveable
                    aid = self._emit(
                        K.STOP,
                        v,
                        node,
                        partial(Stop, service=v, host=node, reason=StopReason.PREEMPT, save=save),
                    )
                    self._service_to(
                        v,
                        S.STOPPING,
                        f"{'saving it' if save else 'stopped'} to make room for {name} "
                        f"(priority {cfg.priority} > {conf[v].priority})",
                        action=aid,
                        room=MadeRoom(node, name, cfg.priority, conf[v].priority, save),
                    )
                    taken.add(v)
                usage.claimed[plan.host] = usage.claimed.get(plan.host, 0) + cfg.memory_mb
                usage.claimed_cpu[plan.host] = usage.claimed_cpu.get(plan.host, 0) + cfg.cpus
                why = f"waiting for room on {plan.host}"
                if plan.victims:
                    why += f" (stopping {', '.join(plan.victims)})"
            else:
                why = self._why_no_host(cfg, exclude)
            if s.saved_on is not None:
                why = f"saved on {s.saved_on}: resumes there when room returns ({why})"
            if s.state is not S.WAITING or s.reason != why:
                self._service_to(name, S.WAITING, why, restart_on=None)

    def _pick(self, s: ServiceStatus, cfg: ServiceConfig, exclude: set[str]) -> str | None:
        """Where a guest that needs a host starts now, without preempting anything: its
        restart-in-place host if it can, its last host if a person started it and that host
        is in the best tier with room (sticky start), else the placement rule."""
        usage = self.usage()
        if (
            s.restart_on is not None
            and self._usable(s.restart_on, cfg)
            and usage.fits(s.restart_on, cfg)
        ):
            return s.restart_on
        saved = s.saved_on
        if (
            saved is not None
            and saved not in exclude
            and self._usable(saved, cfg)
            and allowed(self._domain(cfg), saved)
            and usage.fits(saved, cfg)
        ):
            return saved  # resume its saved state there
        candidate_tiers = self._candidate_tiers(cfg)
        prefer = s.prefer
        if prefer is not None and prefer not in exclude and usage.fits(prefer, cfg):
            for tier in candidate_tiers:
                if any(h not in exclude and usage.fits(h, cfg) for h in tier):
                    if prefer in tier:
                        return prefer
                    break
        return choose(candidate_tiers, cfg, usage, exclude)

    def _best_elsewhere(self, cfg: ServiceConfig, node: str) -> str | None:
        """Where a running guest moves when it must leave `node` (a drain, a person's move
        without a target)."""
        return choose(self._candidate_tiers(cfg), cfg, self.usage(), {node})

    def _victims(self) -> dict[str, list[ServiceConfig]]:
        out: dict[str, list[ServiceConfig]] = {}
        for name, s in self.svcs.items():
            if s.state is S.STARTED and s.node is not None:
                out.setdefault(s.node, []).append(self.conf[name])
        for configs in out.values():
            configs.sort(key=victim_order)
        return out

    def _why_no_host(self, cfg: ServiceConfig, exclude: set[str]) -> str:
        domain = self._domain(cfg)
        if not self._candidate_tiers(cfg):
            online = [n for n, h in self.hosts.items() if h.state is H.ONLINE]
            if domain is not None and domain.restricted:
                online = [n for n in online if allowed(domain, n)]
            missing = sorted({mp for n in online for mp in self._missing(cfg, n)})
            if missing:  # online, but not one has the guest's storage mounted
                return f"no allowed host has {', '.join(missing)} mounted"
            if domain is not None and domain.restricted:
                return f"no member of restricted domain {domain.name} is online"
            return "no host is online"
        if exclude:
            return f"no host with room except those it failed on ({', '.join(sorted(exclude))})"
        usage = self.usage()
        hosts = [h for tier in self._candidate_tiers(cfg) for h in tier]
        roomy = [h for h in hosts if cfg.memory_mb <= usage.free(h)]
        if roomy:  # memory is there: the vCPU limit is what stops it (on the emptiest)
            emptiest = max(roomy, key=lambda h: (usage.free_vcpus(h) or 0, h))
            return (
                f"no allowed host has {cfg.memory_mb} MiB and {cfg.cpus} vCPUs free "
                f"({usage.no_room(emptiest, cfg)})"
            )
        return f"no allowed host has {cfg.memory_mb} MiB free"

    def _start(self, name: str, host: str) -> None:
        s = self.svcs[name]
        resume = s.saved_on == host
        aid = self._emit(K.START, name, host, lambda i: Start(i, name, host, resume=resume))
        why = "restart in place" if s.restart_on == host else "placed"
        where = f"{why} on {host}"
        if resume:
            where = f"resuming its saved state on {host}"
        elif s.saved_on is not None:
            where += f" (a fresh boot: its state saved on {s.saved_on} is dropped)"
        self._service_to(
            name,
            S.STARTING,
            where,
            cause="resume" if resume else "",
            saved_on=None,
            node=host,
            action=aid,
            restart_on=None,
            suspects=(),
            prefer=None,
        )

    # --- 8. moves --------------------------------------------------------------------------

    def _moves(self) -> None:
        draining = {n for n, h in self.hosts.items() if h.state is H.MAINTENANCE}
        if draining:
            usage = self.usage()
            draining = {h for h in draining if usage.count.get(h, 0) > 0}
        # returns and failbacks whose move failed: tried again once their retry time came
        owed = {
            n
            for n, s in self.svcs.items()
            if s.failback and s.state is S.STARTED and self.now >= s.retry_at
        }
        if not draining and not self.joined and not self.started_now and not owed:
            return
        online = {n for n, h in self.hosts.items() if h.state is H.ONLINE}
        for name in sorted(self.svcs):
            s = self.svcs[name]
            if s.state is not S.STARTED or s.desired is not Desired.STARTED:
                continue
            if s.node in draining:
                self._drain(name, s)
            elif self.joined or name in self.started_now or name in owed:
                # a guest placed while a better host was still down or rebooting, or whose
                # failback failed: every online host counts as joined for it
                joined = online if name in self.started_now or name in owed else self.joined
                waits = self._return_or_failback(name, s, joined)
                cur = self.svcs[name]
                if (
                    name in owed
                    and not waits
                    and cur.state is S.STARTED
                    and not self._silent_elsewhere(cur)
                ):
                    # nothing better any more (host gone, no room): the debt is settled
                    self._put(name, replace(self.svcs[name], failback=False))

    def _movable(self, name: str, s: ServiceStatus) -> bool:
        return self.now >= s.retry_at and not self._silent_elsewhere(s)

    def _drain(self, name: str, s: ServiceStatus) -> None:
        held = self._held_by_suspects(s)
        if held is not None:
            why = f"cannot leave {s.node}: {held.reason}"
            if s.reason != why:
                self._service_to(name, S.STARTED, why)
            return
        if not self._movable(name, s):
            return
        cfg = self.conf[name]
        assert s.node is not None
        target = self._best_elsewhere(cfg, s.node)
        if target is None:
            why = f"cannot leave {s.node}: no other allowed host has room"
            if s.reason != why:
                self._service_to(name, S.STARTED, why)
            return
        home = s.home or s.node
        self._move(name, target, cfg.migratable, f"draining {s.node}")
        self._put(name, replace(self.svcs[name], home=home))

    def _return_or_failback(self, name: str, s: ServiceStatus, joined: set[str]) -> bool:
        """Move a guest home, or to a better tier, if one joined; True when such a host is
        there but lacks the guest's storage (not mounted yet after its boot): the move is owed
        and looked at again a heartbeat later."""
        if not self._movable(name, s):
            return False
        cfg = self.conf[name]
        usage = self.usage()
        node = s.node
        assert node is not None
        if s.home == node:  # back home by another way (e.g. recovered there): nothing to return
            self._put(name, replace(s, home=None))
            s = self.svcs[name]
        if s.home is not None and s.home in joined:
            home = s.home
            missing = self._missing(cfg, home)
            if allowed(self._domain(cfg), home) and missing:
                return self._owe(name, f"returns to {home} once {home} has", missing)
            if allowed(self._domain(cfg), home) and usage.fits(home, cfg):
                # `home` is kept until the guest is there: a failed return is tried again
                self._move(name, home, cfg.migratable, f"returning to {home}", failback=True)
                return False
        domain = self._domain(cfg)
        if domain is None or not joined & {m.node for m in domain.members}:
            return False
        current = rank(domain, node)
        if domain.nofailback and current < rank(domain, "\0not-a-member"):
            return False
        better = [t for t in self._candidate_tiers(cfg) if rank(domain, t[0]) < current]
        target = choose(tuple(better), cfg, usage)
        if target is not None:
            self._move(name, target, cfg.migratable, "failback to a better host", failback=True)
            return False
        waiting = sorted(
            m.node
            for m in domain.members
            if m.node in joined and rank(domain, m.node) < current and self._missing(cfg, m.node)
        )
        if waiting:
            host = waiting[0]
            return self._owe(name, f"fails back to {host} once it has", self._missing(cfg, host))
        return False

    def _owe(self, name: str, what: str, missing: list[str]) -> bool:
        """A return or failback waits for the `missing` storage of its host: owed, looked at
        again a heartbeat from now, with the reason shown meanwhile."""
        why = f"{what} {', '.join(missing)} mounted"
        if self.svcs[name].reason != why:
            self._service_to(name, S.STARTED, why)
        retry_at = self.now + self.cfg.heartbeat_interval_s
        self._put(name, replace(self.svcs[name], failback=True, retry_at=retry_at))
        return True

    # --- 9. the live rebalancer (rebalance.py) ------------------------------------------

    def _rebalance(self) -> None:
        """Send the first moves of the rebalancer's plan, as many as may be in flight."""
        if not self.cfg.rebalance:
            self.rebalance_since = None
            return
        outlook = self.rebalance_outlook(limit=self._moves_left())
        if outlook.stance in (Stance.OFF, Stance.PAUSED, Stance.BALANCED):
            self.rebalance_since = None
        elif self.rebalance_since is None:
            self.rebalance_since = self.now
        if outlook.stance is not Stance.MOVING:
            return
        for move in outlook.moves:
            a, b = move.before
            self._move(
                move.service,
                move.target,
                True,
                f"rebalancing memory use ({move.source} {a:.0%}, {move.target} {b:.0%})",
            )
            self._put(move.service, replace(self.svcs[move.service], rebalanced_at=self.now))

    def _moves_left(self) -> int:
        moving = sum(1 for s in self.svcs.values() if s.state in (S.MIGRATING, S.RELOCATING))
        return max(0, self.cfg.rebalance_max_moves - moving)

    def rebalance_outlook(self, limit: int | None = None) -> Outlook:
        """The rebalancer's plan now and why (at most `limit` moves; None: the whole plan)."""
        cfg = self.cfg
        if not cfg.rebalance:
            return Outlook(Stance.OFF, "the live rebalancer is off for this cluster")
        paused = self._rebalance_paused()
        if paused:
            return Outlook(Stance.PAUSED, paused)
        usage = self.usage()
        loads = {
            h: rebalance.HostLoad(
                h, usage.mem_cap[h], usage.mem.get(h, 0), usage.vcpu_cap.get(h), usage.cpu.get(h, 0)
            )
            for h in sorted(self.hosts)
            if h in usage.mem_cap and usage.mem_cap[h] > 0
        }
        spread = rebalance.spread(loads)
        if spread <= cfg.rebalance_spread:
            return Outlook(
                Stance.BALANCED,
                f"memory use differs by {spread:.0%}, within {cfg.rebalance_spread:.0%}",
                spread,
            )
        above = f"memory use differs by {spread:.0%}, more than {cfg.rebalance_spread:.0%}"
        since = self.rebalance_since if self.rebalance_since is not None else self.now
        if self.now < since + cfg.rebalance_hold_s:
            return Outlook(
                Stance.HOLDING,
                f"{above}: acting if it lasts {cfg.rebalance_hold_s:g}s "
                f"({since + cfg.rebalance_hold_s - self.now:.0f}s to go)",
                spread,
            )
        left = self._moves_left()
        if left == 0:
            return Outlook(
                Stance.HOLDING, f"{above}: {cfg.rebalance_max_moves} moves in flight", spread
            )
        moves = rebalance.plan(
            loads,
            self._movable_guests(),
            spread_limit=cfg.rebalance_spread,
            min_gain=cfg.rebalance_min_gain,
            limit=limit,
        )
        if not moves:
            return Outlook(
                Stance.STUCK,
                f"{above}, but no guest can move to narrow a gap by "
                f"{cfg.rebalance_min_gain:.0%} (room, vCPUs, domains, cool-down)",
                spread,
            )
        return Outlook(Stance.MOVING, above, spread, tuple(moves))

    def _rebalance_paused(self) -> str:
        """Why the rebalancer must not act now ('' when it may)."""
        if self.alarm or self.blind:
            return f"paused: {self.alarm or self.blind}"
        down = sorted(h for h, hs in self.hosts.items() if hs.state is not H.ONLINE)
        if down:
            hs = self.hosts[down[0]]
            more = f" (and {len(down) - 1} more)" if len(down) > 1 else ""
            return f"paused: host {down[0]} is {hs.state.value}{more}"
        for name in sorted(self.active):
            s = self.svcs[name]
            if s.state in (S.FENCE, S.RECOVERING):
                return f"paused: {name} is {s.state.value}"
        return ""

    def _movable_guests(self) -> list[rebalance.Movable]:
        """Running guests the rebalancer may move now: settled, live-migratable, nothing owed,
        outside their cool-down; each with the hosts of its current tier."""
        cooldown = self.cfg.rebalance_cooldown_s
        out: list[rebalance.Movable] = []
        tier_of: dict[tuple[str | None, frozenset[str]], dict[str, frozenset[str]]] = {}
        for name, s in self.svcs.items():
            if s.state is not S.STARTED or s.desired is not Desired.STARTED or s.node is None:
                continue
            if s.failback or s.home is not None or s.queued is not None:
                continue
            if not self._movable(name, s):
                continue
            if s.rebalanced_at is not None and self.now - s.rebalanced_at < cooldown:
                continue
            cfg = self.conf.get(name)
            if cfg is None or not cfg.migratable:
                continue
            key = (cfg.domain, self._storage(cfg))
            tiers_by_host = tier_of.get(key)
            if tiers_by_host is None:
                tiers_by_host = {
                    h: members
                    for t in self._candidate_tiers(cfg)
                    for members in (frozenset(t),)
                    for h in t
                }
                tier_of[key] = tiers_by_host
            tier = tiers_by_host.get(s.node)
            if tier is None or len(tier) < 2:
                continue
            out.append(rebalance.Movable(name, s.node, cfg.memory_mb, cfg.cpus, cfg.priority, tier))
        return out


# --- the rulebook: the same answers tick gives, for pages and the API ----------------------


class Rulebook:
    """Answers "may this guest move there?" and "where would it go?" exactly as `tick` would
    at `now` with this snapshot: it runs the engine's phases up to the commands (results,
    liveness, reports) and asks the same functions tick uses. Pure; build one per question
    batch (e.g. a page listing the targets of a guest)."""

    def __init__(self, snapshot: Snapshot, now: float) -> None:
        self._t = _Tick(snapshot, now)
        self._t.prepare()

    def move_refusal(self, service: str, host: str, live: bool) -> Refusal | None:
        """Why a person's migrate (`live`) or relocate of `service` to `host` would not be
        accepted now, or None if it would. `busy`: the command would be queued instead
        (refused if another one already waits; the reason says which)."""
        t = self._t
        s = t.svcs.get(service)
        if s is None:
            return Refusal(R.UNKNOWN_SERVICE, "no such service")
        if s.state in BUSY:
            return _busy(s)
        return t._move_refusal(service, s, host, live)

    def start_refusal(self, service: str | ServiceConfig) -> Refusal | None:
        """Admission control: why a person's start or enable of `service` (a name, or the
        configuration of a service about to be created) would be refused now, or None."""
        t = self._t
        cfg = t.conf.get(service) if isinstance(service, str) else service
        if cfg is None:
            return Refusal(R.UNKNOWN_SERVICE, "no such service")
        return t._admission_refusal(cfg)

    def change_refusal(self, cfg: ServiceConfig) -> Refusal | None:
        """Admission control: why saving `cfg` as the new configuration of a guest that
        should run (more memory, a higher priority, protected again) would break it, or None
        (also for a guest that is not meant to run: its start is checked then)."""
        return self._t._change_refusal(cfg)

    def capacity(self, tolerate: int | None = None) -> Capacity:
        """The cluster's failover capacity after losing `tolerate` hosts (default: the
        setting), e.g. `.describe()` -> "survives 1 host failure; 3.2 GiB spare"."""
        return self._t.capacity(tolerate=tolerate)

    def tolerated(self) -> int:
        """How many host failures (the worst ones) the cluster survives now."""
        return tolerated(*self._t.capacity_inputs())

    def rebalance(self) -> Outlook:
        """The live rebalancer's whole plan now and why (as the next tick sees it before
        people's commands; the tick sends only as many moves as may be in flight)."""
        return self._t.rebalance_outlook()

    def move_targets(self, service: str, live: bool) -> dict[str, Refusal | None]:
        """`move_refusal` for every host, by name."""
        return {h: self.move_refusal(service, h, live) for h in sorted(self._t.hosts)}

    def best_host(self, service: str) -> str | None:
        """Where the engine would put `service` now, without stopping anything: for a running
        guest, the best other host (as a drain picks it); for one that needs a host, where
        its start would go (restart in place, sticky start, placement). None: no room."""
        t = self._t
        s, cfg = t.svcs.get(service), t.conf.get(service)
        if s is None or cfg is None:
            return None
        if s.state in OCCUPYING and s.node is not None:
            return t._best_elsewhere(cfg, s.node)
        return t._pick(s, cfg, set(s.failed_nodes))


def move_refusal(
    snapshot: Snapshot, now: float, service: str, host: str, live: bool
) -> Refusal | None:
    """`Rulebook(snapshot, now).move_refusal(service, host, live)`."""
    return Rulebook(snapshot, now).move_refusal(service, host, live)


def best_host(snapshot: Snapshot, now: float, service: str) -> str | None:
    """`Rulebook(snapshot, now).best_host(service)`."""
    return Rulebook(snapshot, now).best_host(service)
