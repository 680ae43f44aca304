"""The scenario files run through the whole runtime instead of the pure engine.

``RuntimeWorld`` keeps the simulator's hosts, their physics, its timeline and its safety checks
(console/engine/sim/world.py ``World``), and replaces the one call to ``tick`` by the console:

- the scenario's cluster is written to the database (hosts, fence devices, failover domains,
  VM services with their libvirt XML, and a clustered volume group when nodes are in the shared
  storage: the console knows it per cluster);
- every heartbeat is an ``agent.protocol.Heartbeat`` filed by ``ingest`` into a ``MemoryStore``
  on the world's virtual clock (late ones late, as ``console_lag`` says; the drainer's lag is
  recorded in the store as the drainer does);
- each second the HA runner ticks (``runner.run``: lock, snapshot from the database and the
  store, engine, status and events written, actions turned into jobs);
- the jobs' commands go to the simulated agents (``WorldAgents``, a ``FakeAgents``), which carry
  them out on the world's hosts with the simulator's durations and faults, send the agent's
  lifecycle events, and send each result back through ``ingest`` (lost when the scenario says,
  kept in the host's outbox while its network is cut);
- a clean host shutdown is announced by the host's shutdown hook (an ``event`` ``shutdown``),
  and a host that boots again heartbeats with a new boot id;
- people's commands go through the operations layer (console/operations/commands.py, as the page
  and the API do), a refusal there labelled ``refused:S:CODE`` with the rulebook's code;
- the trace's engine labels come from what the console recorded: ``node:``/``state:`` from the
  event log, ``refused:`` from the runner's refusals, ``queued:`` from the pending commands.

The engine settings of a scenario (e.g. ``action_timeout_s``) are given to the console the way
it reads them (``snapshot.engine_settings``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import urllib.parse
from collections.abc import Iterator
from typing import Any
from unittest import mock

from agent.protocol import Command, Event, GuestState, Heartbeat
from console import engine
from console.clusters.models import Cluster, FenceDevice, Host
from console.engine.sim.scenario import Scenario
from console.engine.sim.world import Run, SimHost, World
from console.events.models import Event as LogEvent
from console.ha import rules, runner, snapshot
from console.ha.fakes import AgentError, FakeAgents
from console.ha.models import PendingCommand
from console.ha.store import MemoryStore
from console.jobs.models import JobStep
from console.jobs.transport import use_transport
from console.operations import commands as operations
from console.services.models import FailoverDomain, FailoverDomainMember, VmService
from console.storage.models import VolumeGroup

ACTOR = "scenario"


class WorldAgents(FakeAgents):
    """The agents of the world's hosts: commands carried out on them, in virtual time."""

    def __init__(self, world: RuntimeWorld) -> None:
        super().__init__(world.store)
        self.world = world
        #: jobs whose action's result the scenario loses (`lose_results`)
        self.lost_jobs: set[int] = set()
        #: results and events a host could not send while its network was cut
        self.outbox: dict[str, list[dict[str, Any]]] = {}

    def send(self, host: str, command: dict[str, Any], redacted: dict[str, Any]) -> None:
        self.sent.append((host, redacted))
        self.commands.append((host, command))
        w = self.world
        sim_host = w.hosts.get(host)
        if sim_host is not None and not sim_host.reachable:
            return  # never taken: the host is down or cut off
        epoch = sim_host.epoch if sim_host is not None else 0
        w.at(w.t + self.duration(command["kind"]), 1, lambda: self.complete(host, command, epoch))

    def duration(self, kind: str) -> float:
        sim = self.world.sc.sim
        return {
            "start": sim.start_s,
            "shutdown": sim.stop_s,
            "destroy": sim.stop_s,
            "migrate": sim.migrate_s,
            "fence": sim.fence_s,
        }.get(kind, 0.0)

    def complete(self, host: str, raw: dict[str, Any], epoch: int) -> None:
        w = self.world
        sim_host = w.hosts.get(host)
        if sim_host is not None and (not sim_host.power or sim_host.epoch != epoch):
            return  # the host rebooted or died meanwhile: the work and its result are gone
        result = self.carry_out(host, raw, w.t)
        step = JobStep.objects.filter(command_id=result.id).values("job_id", "stage").first()
        if step is not None and step["job_id"] in self.lost_jobs:
            last = JobStep.objects.filter(job_id=step["job_id"]).order_by("-stage").first()
            if last is not None and last.stage == step["stage"]:
                w.human.append((w.t, f"  ~ result of {result.id} lost"))
                return
        self.send_up(host, result.to_dict())

    def send_up(self, host: str, message: dict[str, Any]) -> None:
        """A message from ``host``'s agent: filed now, or kept while its network is cut."""
        sim_host = self.world.hosts.get(host)
        if sim_host is not None and not sim_host.network:
            self.outbox.setdefault(host, []).append(message)
            return
        self.deliver(host, message, self.world.t)

    def lifecycle(self, host: str, guest: str, state: str, detail: str = "") -> None:
        t = self.world.t
        self.send_up(host, Event(host, "lifecycle", guest, "", state, detail, ts=t).to_dict())

    def do(self, host: str, command: Command) -> dict[str, Any]:
        w, a = self.world, command.args
        sid = command.id
        if command.kind == "define":
            return {"name": "", "uuid": "", "state": "shutoff"}
        if command.kind == "start":
            result = w.start(engine.Start(sid, a["guest"], host, resume=bool(a.get("resume"))))
            if result.ok:
                self.lifecycle(host, a["guest"], "started", "booted")
            return self.outcome(result)
        if command.kind in ("shutdown", "destroy"):
            running = a["guest"] in w.hosts[host].guests
            save = command.kind == "shutdown" and bool(a.get("save"))
            result = w.stop(engine.Stop(sid, a["guest"], host, save=save))
            if running:
                self.lifecycle(host, a["guest"], "stopped", "saved" if save else command.kind)
            data = self.outcome(result)
            return {**data, "how": "saved"} if result.saved else data
        if command.kind == "migrate":
            target = urllib.parse.urlparse(a["dest_uri"]).hostname or ""
            result = w.migrate(engine.Migrate(sid, a["guest"], host, target))
            if result.ok:
                self.lifecycle(target, a["guest"], "started", "migrated")
                self.lifecycle(host, a["guest"], "migrated", "migrated")
            return self.outcome(result)
        if command.kind == "fence":
            victim = str((a.get("params") or {}).get("plug", ""))
            query = a.get("action") == "status"
            action = engine.FenceStatus(sid, victim) if query else engine.Fence(sid, victim)
            outcome: list[engine.ActionResult] = []
            with mock.patch.object(w, "_fence_result", lambda r, lost: outcome.append(r)):
                w.fence(action, False)
            if not outcome[0].ok:
                why = "the host is on, not off" if query else "fence agent failed"
                raise AgentError("command_failed", why)
            return {"outcome": "ok", "exit_code": 0, "power": "off", "output": "off"}
        raise AgentError("not_supported", f"{command.kind} is not simulated here")

    @staticmethod
    def outcome(result: engine.ActionResult) -> dict[str, Any]:
        if not result.ok:
            raise AgentError("command_failed", result.message or "failed")
        return {"message": result.message}


class VirtualClock:
    """The world's time, for the store; ``advance`` lets a runner wait on it."""

    def __init__(self, world: RuntimeWorld) -> None:
        self.world = world

    def __call__(self) -> float:
        return self.world.t

    def advance(self, seconds: float) -> None:
        self.world.t += seconds


class RuntimeWorld(World):
    def __init__(self, sc: Scenario) -> None:
        super().__init__(sc)
        self.store = MemoryStore(clock=VirtualClock(self))
        self.agents = WorldAgents(self)
        self.cluster = self._build()
        self._log_seen = 0
        self._labelled: set[tuple[str, str]] = set()
        self.agents.corosync = {n.name for n in sc.nodes if n.shared_storage}

    def run(self) -> Run:
        run = super().run()
        # the engine's status as the console keeps it (as the next tick would read it)
        status = snapshot.load(self.cluster, self.store, self.t).snapshot.status
        return dataclasses.replace(run, status=status)

    # --- the cluster in the database ---------------------------------------------------------
    def _build(self) -> Cluster:
        sc = self.sc
        cluster = Cluster.objects.create(name="scenario")
        hosts: dict[str, Host] = {}
        for n in sc.nodes:
            hosts[n.name] = Host.objects.create(
                cluster=cluster,
                name=n.name,
                address=n.name,
                libvirt_uri=f"qemu+tcp://{n.name}/system",
                memory_total_mb=n.memory_mb,
                memory_free_mb=n.memory_mb,
                cpus=n.cpus,
                **({"cpu_overcommit": n.cpu_overcommit} if n.cpu_overcommit is not None else {}),
            )
            if n.fence != "none":
                FenceDevice.objects.create(
                    cluster=cluster,
                    host=hosts[n.name],
                    name=f"f-{n.name}",
                    agent="fence_sim",
                    plug=n.name,
                )
        if any(n.shared_storage for n in sc.nodes):
            # a clustered VG, whose dlm lockspace every host in the cluster stack joined: the
            # nodes in the shared storage report corosync in their heartbeats (`heard`), the
            # others none (console/ha/snapshot.py in_cluster_stack)
            VolumeGroup.objects.create(cluster=cluster, name="scenario-vg", clustered=True)
        domains: dict[str, FailoverDomain] = {}
        for d in sc.domains.values():
            domains[d.name] = FailoverDomain.objects.create(
                cluster=cluster,
                name=d.name,
                ordered=d.ordered,
                restricted=d.restricted,
                nofailback=d.nofailback,
            )
            for m in d.members:
                FailoverDomainMember.objects.create(
                    domain=domains[d.name], host=hosts[m.node], priority=m.priority
                )
        for s in sc.services.values():
            runs = s.node is not None and s.desired is engine.Desired.STARTED
            VmService.objects.create(
                cluster=cluster,
                name=s.name,
                domain_xml=(
                    f"<domain type='kvm'><name>{s.name}</name>"
                    f"<memory unit='MiB'>{s.memory_mb}</memory><vcpu>{s.cpus}</vcpu></domain>"
                ),
                autostart=s.autostart,
                failover_domain=domains.get(s.domain) if s.domain else None,
                recovery=s.recovery.value,
                max_restarts=s.max_restarts,
                restart_window_s=int(s.restart_window_s),
                max_relocations=s.max_relocations,
                priority=s.priority,
                migratable=s.migratable,
                protected=s.protected,
                # the engine's `saveable`: the console's own switch (the XML has no devices
                # that would refuse a managed save, VmService.save_refusal)
                save_on_preempt=s.saveable,
                desired_state=s.desired.value,
                state="started" if runs else "stopped",
                host=hosts[s.node] if s.node else None,
            )
        return cluster

    # --- heartbeats through the ingest ---------------------------------------------------------
    def heard(self, host: SimHost) -> None:
        sent = host.last_heartbeat
        assert sent is not None
        beat = Heartbeat(
            host=host.spec.name,
            agent_version="scenario",
            seq=int(sent * 1000),
            interval_s=self.sc.settings.heartbeat_interval_s,
            libvirt_connected=True,
            host_uuid=f"uuid-{host.spec.name}",
            cpus=host.spec.cpus,
            memory_total_mib=host.spec.memory_mb,
            memory_free_mib=host.reported_free,
            guests=[GuestState(g, "", "running") for g in sorted(host.reported)],
            boot=f"{host.spec.name}-boot{host.epoch}",  # a new agent process after a reboot
            cluster=self.agents.membership() if host.spec.name in self.agents.corosync else None,
            unhealthy={
                g: {"check": str(getattr(f.check, "value", f.check)), "detail": f.detail}
                for g, f in sorted(host.reported_unhealthy.items())
            },
            ts=sent,
            sent_at=sent,
        )
        self.agents.deliver(host.spec.name, beat.to_dict(), self.t)

    # --- scenario events: people through the operations layer ----------------------------------
    def event(self, e: Any) -> None:
        crashed_on = [n for n, h in sorted(self.hosts.items()) if e.service in h.guests]
        super().event(e)
        do, svc, node = e.do, e.service or "", e.node or ""
        for command in self.commands:
            self._person(command.kind.value, command.service, command.node)
        self.commands = []
        if do == "crash":
            for name in crashed_on:  # QEMU died: the agent says so at once
                self.agents.lifecycle(name, svc, "crashed", "failed")
        elif do == "network_on":
            for message in self.agents.outbox.pop(node, []):
                self.agents.deliver(node, message, self.t)
        elif do == "shutdown" and self.hosts[node].shutting_down:
            self.agents.shutdown(node, self.t)  # its shutdown hook (agent/shutdown.py)
        elif do == "console_restart":
            self.store.restart()  # a new runner process on a Redis that lost its data
        elif do in ("maintenance_on", "maintenance_off"):
            with contextlib.suppress(operations.OperationError):
                operations.maintenance(
                    Host.objects.get(cluster=self.cluster, name=node),
                    do == "maintenance_on",
                    actor=ACTOR,
                )
        elif do == "acknowledge":
            try:
                operations.acknowledge_down(
                    Host.objects.get(cluster=self.cluster, name=node), actor=ACTOR
                )
            except operations.OperationError as exc:
                self.human.append((self.t, f"  ! acknowledge refused: {exc}"))

    def _person(self, kind: str, service: str, node: str | None) -> None:
        row = VmService.objects.select_related("cluster", "host").get(
            cluster=self.cluster, name=service
        )
        with rules.use(store=self.store, clock=self.store.clock):
            try:
                operations.service_command(row, kind, actor=ACTOR, host=node)
            except operations.OperationError as exc:
                self.label(f"refused:{service}:{self._refusal_code(kind, row, node)}")
                self.human.append((self.t, f"  ! {exc}"))

    def _refusal_code(self, kind: str, row: VmService, node: str | None) -> str:
        if kind in ("start", "stop"):
            return engine.RefusalCode.DISABLED.value
        book, _ = rules.rulebook(self.cluster)
        refusal = book.move_refusal(row.name, node or "", kind == "migrate")
        return refusal.code.value if refusal else "refused"

    # --- the console decides ----------------------------------------------------------------
    def engine(self) -> None:
        lag = self.ingest_lag_s()
        self.store.record_ingest(at=self.t, caught_up_at=self.t - lag, backlog=1 if lag else 0)
        reports = runner.run(self.cluster.pk, self.store)
        self._label_log()
        for report in reports:
            for action, job_id in zip(report.actions, report.jobs, strict=True):
                self.announce(action, job_id)

    def _label_log(self) -> None:
        events = LogEvent.objects.filter(pk__gt=self._log_seen, cluster=self.cluster).order_by("pk")
        for ev in events:
            self._log_seen = ev.pk
            data = ev.data or {}
            if ev.actor == "engine" and ev.verb in ("host-state", "service-state"):
                prefix = "node" if data.get("kind") == "host" else "state"
                self.trace.append((self.t, f"{prefix}:{ev.object_name}:{data.get('new')}"))
            elif ev.result == "refused" and ev.object_type == "vmservice":
                self.label(f"refused:{ev.object_name}:{data.get('code')}")
        for cid, service, outcome in PendingCommand.objects.filter(
            cluster=self.cluster, outcome="queued"
        ).values_list("command_id", "service", "outcome"):
            if (cid, outcome) not in self._labelled:
                self._labelled.add((cid, outcome))
                self.label(f"queued:{service}")

    def announce(self, a: engine.Action, job_id: int) -> None:
        """The labels and checks the simulator makes when an action starts; the work itself
        is the job's commands, carried out by the agents."""
        if self.lost(a):
            self.agents.lost_jobs.add(job_id)
        if isinstance(a, engine.Start):
            self.label(f"start:{a.service}@{a.host}")
            self.check_start(a.service, a.host, {a.host})
        elif isinstance(a, engine.Stop):
            self.label(f"stop:{a.service}@{a.host}")
        elif isinstance(a, engine.Migrate | engine.Relocate) and a.source == a.target:
            self.violations.append(f"t={self.t:g}: {a.service} moved to {a.target}, its own host")
        elif isinstance(a, engine.Migrate):
            self.label(f"migrate:{a.service}:{a.source}->{a.target}")
            self.check_start(a.service, a.target, {a.source, a.target})
        elif isinstance(a, engine.Relocate):
            self.label(f"relocate:{a.service}:{a.source}->{a.target}")
            self.check_start(a.service, a.target, {a.source, a.target})


@contextlib.contextmanager
def runtime_settings(sc: Scenario) -> Iterator[None]:
    """The scenario's engine settings, where the console reads its own."""
    with mock.patch.object(snapshot, "engine_settings", lambda cluster=None: sc.settings):
        yield


def simulate_runtime(sc: Scenario) -> Run:
    """Run a scenario through the runtime (needs a database: a transactional test)."""
    snapshot.forget()  # nothing kept from another test's cluster (ids are reused)
    with runtime_settings(sc):
        world = RuntimeWorld(sc)
        with use_transport(world.agents):
            return world.run()


__all__ = ["RuntimeWorld", "WorldAgents", "simulate_runtime"]
