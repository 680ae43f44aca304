"""Simulated hosts in virtual time, driving the real `tick` exactly as the console would.

At one instant things happen in this order: scenario events, completions of actions, host
heartbeats, then the engine's tick (whose actions start at that instant). Actions take the
durations of `SimSettings`. The world also checks the two safety invariants on every start:
no guest runs on two hosts at once, and no guest that may still run on a silent host is started
elsewhere before that host is fenced, acknowledged down, or reports again.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from console.engine.commands import Command, CommandKind
from console.engine.model import (
    Action,
    ActionResult,
    Decision,
    Fence,
    FenceStatus,
    HealthCheck,
    HealthFailure,
    HostObservation,
    Migrate,
    Relocate,
    ReplyOutcome,
    Snapshot,
    Start,
    Stop,
)
from console.engine.sim.scenario import Event, NodeSpec, Scenario
from console.engine.states import Desired
from console.engine.status import Status
from console.engine.tick import tick


@dataclass
class SimHost:
    spec: NodeSpec
    power: bool
    network: bool = True
    guests: set[str] = field(default_factory=set)
    #: guests whose health check fails on this host (running and hung, or gone and why)
    unhealthy: dict[str, HealthFailure] = field(default_factory=dict)
    #: guests whose state was saved here (managed save)
    saved: set[str] = field(default_factory=set)
    #: bumped at every power change, so work in flight across a reboot is lost
    epoch: int = 0
    fence_failures_left: int | None = 0  # None: fail always
    #: the console's view of the host's heartbeats (what reached it)
    last_heartbeat: float | None = None
    reported: frozenset[str] = frozenset()
    reported_unhealthy: dict[str, HealthFailure] = field(default_factory=dict)
    reported_free: int = 0
    #: heartbeats sent before this time never reach the console (console_restart's backlog)
    unseen_until: float = 0.0
    #: heartbeats sent before `lag_until` reach the console `lag_s` late (console_lag)
    lag_s: float = 0.0
    lag_until: float = 0.0
    maintenance: bool = False
    shutting_down: bool = False
    shutdown_deadline: float = 0.0
    acknowledged_at: float | None = None
    #: results that could not be sent while the network was down
    outbox: list[ActionResult] = field(default_factory=list)

    @property
    def reachable(self) -> bool:
        return self.power and self.network


@dataclass
class FailRule:
    node: str | None
    left: int | None  # None: forever


@dataclass
class Run:
    """What a simulation produced."""

    trace: list[tuple[float, str]]
    #: labels and engine log lines, for --human
    human: list[tuple[float, str]]
    violations: list[str]
    status: Status
    hosts: dict[str, SimHost]


class World:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.t = 0.0
        self.hosts = {n.name: SimHost(n, power=n.power) for n in sc.nodes}
        for h in self.hosts.values():
            if h.spec.fence == "fails":
                h.fence_failures_left = None
        self.trace: list[tuple[float, str]] = []
        self.human: list[tuple[float, str]] = []
        self.violations: list[str] = []
        self.status = Status()
        self.results: list[ActionResult] = []
        self.commands: list[Command] = []
        self.fail_starts: dict[str, list[FailRule]] = {}
        self.fail_migrations: dict[str, int | None] = {}
        #: service -> (check, how many more of its runs fail that check at once)
        self.hangs: dict[str, tuple[HealthCheck, int]] = {}
        #: "service:S" / "node:N" -> how many more results of its actions are lost
        self.lose: dict[str, int] = {}
        #: console_restart: since when the console's view of heartbeats is continuous
        self.view_since: float | None = None
        #: service -> silent hosts that may still run it, as far as the console can know
        self.maybe: dict[str, set[str]] = {}
        self._heap: list[tuple[float, int, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._commands = itertools.count(1)

    # --- plumbing --------------------------------------------------------------------------

    def label(self, text: str) -> None:
        self.trace.append((self.t, text))
        self.human.append((self.t, text))

    def at(self, t: float, phase: int, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (t, phase, next(self._seq), fn))

    def run(self) -> Run:
        sc = self.sc
        for name, cfg in sorted(sc.services.items()):
            started = cfg.desired is Desired.STARTED
            if cfg.node is not None and started and self.hosts[cfg.node].power:
                self.hosts[cfg.node].guests.add(name)
                self.label(f"running:{name}@{cfg.node}")
        for event in sc.events:
            self.at(event.t, 0, functools.partial(self.event, event))
        interval = sc.settings.heartbeat_interval_s
        for k in itertools.count():
            if k * interval > sc.until:
                break
            self.at(k * interval, 2, self.heartbeats)
        for k in itertools.count():
            if k * sc.sim.tick_s > sc.until:
                break
            self.at(k * sc.sim.tick_s, 3, self.engine)
        while self._heap:
            t, _, _, fn = heapq.heappop(self._heap)
            if t > sc.until:
                break
            self.t = t
            fn()
        return Run(self.trace, self.human, self.violations, self.status, self.hosts)

    # --- scenario events -------------------------------------------------------------------

    def event(self, e: Event) -> None:
        do, node, svc = e.do, e.node or "", e.service or ""
        if do in ("migrate", "relocate"):
            self.label(f"{do}_requested:{svc}:{node}")
        elif do in ("start", "stop", "enable", "disable"):
            self.label(f"{do}_requested:{svc}")
        elif do == "appear":
            self.label(f"appear:{svc}@{node}")
        else:
            self.label(f"{do}:{node or svc}")
        host = self.hosts.get(node)
        if do == "power_off" and host is not None:
            self.power_off(host)
        elif do == "power_on" and host is not None and not host.power:
            host.power, host.network, host.epoch = True, True, host.epoch + 1
            host.shutting_down = False
            host.guests.clear()
        elif do == "network_off" and host is not None:
            if host.network and host.power:
                for g in host.guests:
                    self.maybe.setdefault(g, set()).add(node)
            host.network = False
        elif do == "network_on" and host is not None:
            host.network = True
            if host.power:
                self.results.extend(host.outbox)
            host.outbox.clear()
        elif do == "crash":
            for h in sorted(self.hosts.values(), key=lambda x: x.spec.name):
                if svc in h.guests:
                    h.guests.discard(svc)
                    self.label(f"down:{svc}@{h.spec.name}")
                    if e.check is not None:  # e.g. a panic with on_crash destroy
                        h.unhealthy[svc] = HealthFailure(HealthCheck(e.check), "scenario")
        elif do == "hang" and e.check is not None:
            check = HealthCheck(e.check)
            for h in self.hosts.values():
                if svc in h.guests:
                    h.unhealthy[svc] = HealthFailure(check, "scenario")
            if e.count is not None and e.count > 1:
                self.hangs[svc] = (check, e.count - 1)
        elif do == "fail_starts":
            self.fail_starts.setdefault(svc, []).append(FailRule(e.node, e.count))
        elif do == "fail_migrations":
            self.fail_migrations[svc] = e.count
        elif do == "fail_fence" and host is not None:
            host.fence_failures_left = e.count
        elif do == "lose_results":
            key = f"node:{node}" if e.node else f"service:{svc}"
            self.lose[key] = self.lose.get(key, 0) + (e.count or 1)
        elif do == "console_restart":
            self.view_since = self.t
            for h in self.hosts.values():
                h.last_heartbeat, h.reported, h.reported_free = None, frozenset(), 0
            if host is not None:
                host.unseen_until = self.t + (e.duration or 0.0)
        elif do == "console_lag":
            for h in [host] if host is not None else list(self.hosts.values()):
                h.lag_s, h.lag_until = e.s or 0.0, self.t + (e.duration or 0.0)
        elif do in ("start", "stop", "enable", "disable", "migrate", "relocate"):
            cid = f"c{next(self._commands)}"
            self.commands.append(Command(cid, CommandKind(do), svc, e.node))
        elif do in ("maintenance_on", "maintenance_off") and host is not None:
            host.maintenance = do == "maintenance_on"
        elif do == "shutdown" and host is not None and host.power:
            host.shutting_down = True
            host.shutdown_deadline = self.t + self.sc.sim.shutdown_timeout_s
        elif do == "acknowledge" and host is not None:
            host.acknowledged_at = self.t
            for hosts in self.maybe.values():
                hosts.discard(node)
        elif do == "appear" and host is not None and host.power:
            host.guests.add(svc)
            self.label(f"running:{svc}@{node}")

    def power_off(self, host: SimHost) -> None:
        if not host.power:
            return
        name = host.spec.name
        for g in sorted(host.guests):
            if host.network:
                self.maybe.setdefault(g, set()).add(name)
            self.label(f"down:{g}@{name}")
        host.guests.clear()
        host.unhealthy.clear()
        host.power, host.epoch = False, host.epoch + 1
        host.outbox.clear()

    # --- heartbeats and the engine -----------------------------------------------------------

    def heartbeats(self) -> None:
        for name in sorted(self.hosts):
            host = self.hosts[name]
            if (
                host.power
                and host.shutting_down
                and (not host.guests or self.t >= host.shutdown_deadline)
            ):
                for g in sorted(host.guests):
                    self.label(f"down:{g}@{name}")
                    self.maybe.setdefault(g, set()).add(name)
                host.guests.clear()
                self.label(f"halt:{name}")
                host.power, host.epoch = False, host.epoch + 1
            if not host.reachable or self.t < host.unseen_until:
                continue
            beat = functools.partial(
                self.deliver,
                host,
                self.t,
                frozenset(host.guests),
                host.spec.memory_mb - self.used(host),
                dict(host.unhealthy),
            )
            if self.t < host.lag_until:
                self.at(self.t + host.lag_s, 2, beat)
            else:
                beat()

    def deliver(
        self,
        host: SimHost,
        sent: float,
        guests: frozenset[str],
        free: int,
        unhealthy: dict[str, HealthFailure] | None = None,
    ) -> None:
        """A heartbeat reaches the console (at once, or late while it lags)."""
        if host.last_heartbeat is not None and sent <= host.last_heartbeat:
            return
        host.last_heartbeat, host.reported, host.reported_free = sent, guests, free
        host.reported_unhealthy = dict(unhealthy or {})
        for hosts in self.maybe.values():
            hosts.discard(host.spec.name)
        self.heard(host)

    def heard(self, host: SimHost) -> None:
        """The console took ``host``'s heartbeat (its ``reported*`` fields say what it said):
        the pure engine reads them in the next tick; a world that runs the console's runtime
        instead (tests/console/runtime_world.py) sends it through the ingest here."""

    def ingest_lag_s(self) -> float:
        return max((h.lag_s for h in self.hosts.values() if self.t < h.lag_until), default=0.0)

    def used(self, host: SimHost) -> int:
        return sum(self.sc.services[g].memory_mb for g in host.guests)

    def engine(self) -> None:
        obs = {
            name: HostObservation(
                name=name,
                last_heartbeat=h.last_heartbeat,
                running=h.reported,
                memory_total_mb=h.spec.memory_mb,
                memory_free_mb=h.reported_free,
                cpus=h.spec.cpus,
                cpu_overcommit=h.spec.cpu_overcommit,
                maintenance=h.maintenance,
                shutting_down=h.shutting_down,
                fence_device=h.spec.fence != "none",
                shared_storage=h.spec.shared_storage,
                acknowledged_down_at=h.acknowledged_at,
                unhealthy=h.reported_unhealthy,
                mounted=h.spec.mounted,
            )
            for name, h in self.hosts.items()
        }
        snap = Snapshot(
            hosts=obs,
            services=self.sc.services,
            domains=self.sc.domains,
            results=tuple(self.results),
            commands=tuple(self.commands),
            status=self.status,
            settings=self.sc.settings,
            view_since=self.view_since,
            ingest_lag_s=self.ingest_lag_s(),
            shared_mounts=self.sc.shared_mounts,
        )
        self.results, self.commands = [], []
        decision = tick(snap, self.t)
        self.status = decision.status
        self.report(decision)
        for action in decision.actions:
            self.execute(action)

    def report(self, d: Decision) -> None:
        for line in d.log:
            self.human.append((self.t, f"  . {line}"))
        for tr in d.transitions:
            prefix = "node" if tr.kind == "host" else "state"
            self.trace.append((self.t, f"{prefix}:{tr.name}:{tr.new.value}"))
        for reply in d.replies:
            if reply.outcome is ReplyOutcome.REFUSED:
                self.label(f"refused:{reply.service}:{reply.code}")
            elif reply.outcome is ReplyOutcome.QUEUED:
                self.label(f"queued:{reply.service}")

    # --- actions ---------------------------------------------------------------------------

    def lost(self, a: Action) -> bool:
        """Is the result of `a` to be lost (a `lose_results` event)?"""
        key = f"node:{a.host}" if isinstance(a, Fence | FenceStatus) else f"service:{a.service}"
        left = self.lose.get(key, 0)
        if left <= 0:
            return False
        self.lose[key] = left - 1
        return True

    def execute(self, a: Action) -> None:
        sim = self.sc.sim
        lost = self.lost(a)
        if isinstance(a, Fence | FenceStatus):
            self.at(self.t + sim.fence_s, 1, lambda: self.fence(a, lost))
            return
        if isinstance(a, Start):
            self.label(f"start:{a.service}@{a.host}")
            self.check_start(a.service, a.host, {a.host})
            self.dispatch(a.host, sim.start_s, lambda: self.start(a), lost)
        elif isinstance(a, Stop):
            self.label(f"stop:{a.service}@{a.host}")
            self.dispatch(a.host, sim.stop_s, lambda: self.stop(a), lost)
        elif isinstance(a, Migrate | Relocate) and a.source == a.target:
            self.violations.append(f"t={self.t:g}: {a.service} moved to {a.target}, its own host")
        elif isinstance(a, Migrate):
            self.label(f"migrate:{a.service}:{a.source}->{a.target}")
            self.check_start(a.service, a.target, {a.source, a.target})
            self.dispatch(a.source, sim.migrate_s, lambda: self.migrate(a), lost)
        else:
            self.label(f"relocate:{a.service}:{a.source}->{a.target}")
            self.check_start(a.service, a.target, {a.source, a.target})
            self.dispatch(a.source, sim.stop_s + sim.start_s, lambda: self.relocate(a), lost)

    def dispatch(
        self, host_name: str, seconds: float, fn: Callable[[], ActionResult], lost: bool = False
    ) -> None:
        """Send work to a host's agent; lost if the agent cannot be reached or reboots; its
        result never reaches the console when `lost`."""
        host = self.hosts[host_name]
        if not host.reachable:
            return
        epoch = host.epoch

        def complete() -> None:
            if not host.power or host.epoch != epoch:
                return
            result = fn()
            if lost:
                self.human.append((self.t, f"  ~ result of {result.action_id} lost"))
            elif host.network:
                self.results.append(result)
            else:
                host.outbox.append(result)

        self.at(self.t + seconds, 1, complete)

    def check_start(self, service: str, host: str, allowed: set[str]) -> None:
        maybe = sorted(self.maybe.get(service, set()) - allowed)
        if maybe:
            self.violations.append(
                f"t={self.t:g}: {service} started on {host} while it may still run on silent "
                f"{', '.join(maybe)} (not fenced, not acknowledged)"
            )

    def check_copies(self, service: str, host: str, allowed: set[str]) -> None:
        others = sorted(
            n for n, h in self.hosts.items() if service in h.guests and n not in allowed
        )
        if others:
            self.violations.append(
                f"t={self.t:g}: {service} started on {host} while running on "
                f"{', '.join(others)}: two copies"
            )

    def fence(self, a: Fence | FenceStatus, lost: bool = False) -> None:
        host = self.hosts[a.host]
        if isinstance(a, FenceStatus):
            off = not host.power and host.fence_failures_left is not None
            self.label(f"fence_status:{a.host}:{'off' if off else 'on'}")
            if off:  # confirmed off by its device, as good as a fence
                for hosts in self.maybe.values():
                    hosts.discard(a.host)
            self._fence_result(ActionResult(a.id, off, "off" if off else "on"), lost)
            return
        ok = host.spec.fence != "none"
        if ok and host.fence_failures_left is None:
            ok = False
        elif ok and host.fence_failures_left:
            host.fence_failures_left -= 1
            ok = False
        self.label(f"fence:{a.host}:{'ok' if ok else 'failed'}")
        if ok:
            self.power_off(host)
            for hosts in self.maybe.values():
                hosts.discard(a.host)
        self._fence_result(ActionResult(a.id, ok, "off" if ok else "fence agent failed"), lost)

    def _fence_result(self, result: ActionResult, lost: bool) -> None:
        if lost:
            self.human.append((self.t, f"  ~ result of {result.action_id} lost"))
        else:
            self.results.append(result)

    def _start_fails(self, service: str, host: str) -> str:
        for rule in self.fail_starts.get(service, []):
            if rule.node not in (None, host) or rule.left == 0:
                continue
            if rule.left is not None:
                rule.left -= 1
            return "start failed (scenario)"
        h = self.hosts[host]
        if self.sc.services[service].memory_mb > h.spec.memory_mb - self.used(h):
            return "not enough memory"
        return ""

    def _run_on(self, service: str, host: str, allowed: set[str]) -> None:
        self.check_copies(service, host, allowed)
        h = self.hosts[host]
        h.guests.add(service)
        h.unhealthy.pop(service, None)  # a fresh run
        self.label(f"running:{service}@{host}")
        check, left = self.hangs.get(service, (HealthCheck.PROBE, 0))
        if left > 0:  # this run fails its check at once too (`hang` with a count)
            self.hangs[service] = (check, left - 1)
            h.unhealthy[service] = HealthFailure(check, "scenario")

    def start(self, a: Start) -> ActionResult:
        h = self.hosts[a.host]
        if a.service in h.guests:
            return ActionResult(a.id, True, "already running")
        why = self._start_fails(a.service, a.host)
        if why:
            return ActionResult(a.id, False, why)
        if a.resume and a.service in h.saved:
            self.label(f"resumed:{a.service}@{a.host}")
        h.saved.discard(a.service)  # resumed, or a fresh boot that drops the saved state
        self._run_on(a.service, a.host, {a.host})
        return ActionResult(a.id, True)

    def stop(self, a: Stop) -> ActionResult:
        host = self.hosts[a.host]
        saved = False
        if a.service in host.guests:
            host.guests.discard(a.service)
            host.unhealthy.pop(a.service, None)
            self.label(f"down:{a.service}@{a.host}")
            if a.save:
                host.saved.add(a.service)
                self.label(f"saved:{a.service}@{a.host}")
                saved = True
        return ActionResult(a.id, True, saved=saved)

    def migrate(self, a: Migrate) -> ActionResult:
        source, target = self.hosts[a.source], self.hosts[a.target]
        if a.service not in source.guests:
            return ActionResult(a.id, False, "not running on the source")
        if not target.reachable:
            return ActionResult(a.id, False, "target unreachable")
        left = self.fail_migrations.get(a.service, 0)
        if left is None or left > 0:
            if left is not None:
                self.fail_migrations[a.service] = left - 1
            return ActionResult(a.id, False, "migration failed (scenario)")
        if self.sc.services[a.service].memory_mb > target.spec.memory_mb - self.used(target):
            return ActionResult(a.id, False, "not enough memory on the target")
        self._run_on(a.service, a.target, {a.source, a.target})
        source.guests.discard(a.service)
        self.label(f"down:{a.service}@{a.source}")
        return ActionResult(a.id, True)

    def relocate(self, a: Relocate) -> ActionResult:
        source, target = self.hosts[a.source], self.hosts[a.target]
        if a.service in source.guests:
            source.guests.discard(a.service)
            self.label(f"down:{a.service}@{a.source}")
        if not target.reachable:
            return ActionResult(a.id, False, "target unreachable")
        why = self._start_fails(a.service, a.target)
        if why:
            return ActionResult(a.id, False, why)
        self._run_on(a.service, a.target, {a.target})
        return ActionResult(a.id, True)


def simulate(sc: Scenario) -> Run:
    return World(sc).run()
