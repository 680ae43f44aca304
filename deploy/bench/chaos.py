"""The chaos suite: a real console, five simulated hosts, N random faults, an independent watcher.

    deploy/chaos --faults 200 --seed 1            # test:/// hosts (simulated), ~5 s a fault
    deploy/chaos --faults 30 --seed 7 --lab       # the namespace lab (root; chaos_lab.py)

What runs (all real processes): a Redis on a port of its own, the console's processes as
tests/lab/harness.py `Console` starts them (Celery worker and beat, and whatever that class
starts besides) plus the web server, and five agents `python -m agent` on libvirt's
`test:///default` driver — simulated hosts h1..h5, each holding its guests inside its own
process — and the agent beside the console (fencing when no host is left). The cluster is made
through the REST API: hosts, one fence device per host (deploy/bench/fence_haven_chaos, which
powers a host off by SIGKILLing its agent), failover domains and 12 guests.

Then N faults, drawn from --seed, one at a time with pauses: power loss (agent kill -9; powered
back after the fence, or after 20 s), hung host (SIGSTOP 5-10 s, then SIGCONT), a guest
destroyed behind the cluster's back (the agent's own `destroy` command, sent straight to its
queue as `virsh destroy` would be run on the host), Redis kill -9 and restart, worker kill -9,
beat kill -9, kill -9 of any other console process (the ingest drainer), web restart, people's
operations through the REST API (migrate, relocate, stop then start, maintenance on then off),
and fencing storms (3 of 5 agents SIGSTOPped at once, or 0.5 s apart). Console processes are
restarted 0.1 s after they exit, as systemd's `Restart=always` does in production; an exit the
runner did not cause is reported.

The watcher (deploy/bench/chaos_watch.py) then reads the agents' trace (HAVEN_AGENT_TRACE) and
the power log, not the console's view, and prints faults by kind, double runs, starts before
fence, healthy hosts fenced, guests lost, time to converge after the last fault, the longest HA
stall (the runner's tick count, polled in the database) and every traceback in the logs (a
chained one once), marking those with a frame in Haven's own code. Exit status 1 when any
safety number is not clean, or when a traceback came from Haven's code (Redis away or
restarting is one warning line there, console/core/broker.py; libraries' tracebacks are
listed, not counted). Everything lands in --root (default var/chaos/).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# the project, deploy/bench as the package `bench`, and the labs' kit
for _path in (ROOT, ROOT / "deploy", ROOT / "deploy" / "lab"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import labkit  # noqa: E402

from bench import chaos_watch as watch  # noqa: E402

HOSTS = ("h1", "h2", "h3", "h4", "h5")
GUESTS = tuple(f"g{i:02d}" for i in range(1, 13))
CLUSTER = "chaos"
CONSOLE_AGENT = "haven-console"
FENCE_DIR = Path(__file__).resolve().parent  # holds fence_haven_chaos
HEARTBEAT_S, MISSED = 1.0, 3  # HAVEN_HEARTBEAT_INTERVAL_S, HAVEN_MISSED_HEARTBEATS (defaults)
# A host counts as failed once frozen (or dead) this long: the silence limit, less one interval
# (its last heartbeat may have left up to one interval before the freeze).
SILENCE_S = (MISSED - 1) * HEARTBEAT_S
BOOT_S = 1.5  # a simulated host's boot: power on -> agent started
RESTART_S = 0.1  # systemd RestartSec (its default) for the console's processes
KINDS: dict[str, float] = {  # fault kind -> weight
    "power-loss": 3,
    "hung-host": 3,
    "guest-destroyed": 3,
    "redis-restart": 1,
    "worker-kill": 1,
    "beat-kill": 1,
    "console-kill": 1,  # any other process harness.Console starts (e.g. the ingest drainer)
    "web-restart": 1,
    "op-migrate": 1,
    "op-relocate": 1,
    "op-stop-start": 1,
    "op-maintenance": 1,
    "storm": 1,
    "storm-staggered": 1,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def guest_xml(name: str) -> str:
    return (
        f"<domain type='test'><name>{name}</name><memory unit='KiB'>1024</memory>"
        "<vcpu>1</vcpu><os><type>hvm</type></os></domain>"
    )


class Log:
    """The power log (power.jsonl), shared with the fence agent: one JSON line per change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def __call__(self, host: str, event: str, **extra: object) -> None:
        line = json.dumps({"t": time.time(), "host": host, "event": event, "by": "chaos", **extra})
        with self._lock, open(self.path, "a") as f:
            f.write(line + "\n")


class Redis:
    def __init__(self, root: Path, port: int) -> None:
        self.dir, self.port = root / "redis", port
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        # as deploy/start-services starts Haven's Redis: append-only file, a restart keeps it
        argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.dir)]
        argv += ["--logfile", str(self.dir / "redis.log")]
        self.proc = subprocess.Popen(argv, start_new_session=True)
        wait_for("redis", self.pings, 10)

    def pings(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def wait_for(what: str, check: Callable[[], Any], timeout: float, step: float = 0.1) -> Any:
    """``check``'s first true value; TimeoutError naming `what` after ``timeout``."""
    return labkit.wait_for(check, timeout, what, step, TimeoutError)


@dataclass
class Host:
    """A simulated host: power switch and pid in files the fence agent reads, under a lock."""

    name: str
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    boot_at: float | None = None
    frozen: int = 0  # pid SIGSTOPped by the runner, 0 when none

    def file(self, suffix: str) -> Path:
        return self.dir / f"{self.name}.{suffix}"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with open(self.file("lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    @property
    def power(self) -> str:
        try:
            return self.file("power").read_text().strip()
        except OSError:
            return "off"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Fault:
    n: int
    kind: str
    target: str
    start: float
    end: float = 0.0
    note: str = ""


@dataclass
class Outcome:
    faults: list[Fault] = field(default_factory=list)
    console_exits: list[str] = field(default_factory=list)  # exits the runner did not cause
    ops: Counter[str] = field(default_factory=Counter)


class Api:
    """The REST API as a script uses it: a token, JSON, retried while the web restarts."""

    def __init__(self, base: str, token: str) -> None:
        import requests

        self.base, self.session = base, requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def call(self, method: str, path: str, body: Any = None, timeout: float = 15.0) -> Any:
        import requests

        deadline = time.monotonic() + timeout
        while True:
            try:
                r = self.session.request(method, self.base + path, json=body, timeout=5)
                if r.status_code < 500:
                    return r
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method} {path}: no answer from the web in {timeout:.0f} s")
            time.sleep(0.3)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        r = self.call(method, path, body)
        if r.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:400]}")
        return r.json()


class Runner:
    """What both runs share: the console's processes under a systemd-like supervisor, the HA
    runner's ticks polled in the database, threads, messages."""

    cluster = CLUSTER
    #: fault kind -> weight; a kind ``a-b`` is done by the method ``fault_a_b``
    kinds: dict[str, float] = KINDS
    #: the pause between two faults is drawn from this range (s)
    pause_s = (0.5, 1.5)
    #: the widths of the kind and target columns of a fault's line
    columns = (16, 6)
    seed: int
    n_faults: int
    rng: random.Random
    root: Path
    redis: Any  # Redis here, the lab's LabRedis in chaos_lab.py

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.console: Any = None
        self.outcome = Outcome()
        self.ticks: list[float] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._expected_exit: set[str] = set()

    def env(self) -> dict[str, str]:
        """The console processes' environment: the run's Redis, database and var folder."""
        return {
            "REDIS_URL": self.redis.url,
            "DATABASE_URL": f"sqlite:///{self.root / 'db.sqlite3'}",
            "HAVEN_VAR_DIR": str(self.root / "var"),
            "HAVEN_LOG_LEVEL": "INFO",
            "DJANGO_SETTINGS_MODULE": "console.settings",
        }

    def fault_errors(self) -> tuple[type[Exception], ...]:
        """What a fault may raise as its own outcome (noted on the fault), not a bug."""
        return (TimeoutError, RuntimeError)

    def inject(self) -> None:
        """The kinds come from the seed alone; each fault's own choices (target, durations)
        from a generator of its own, so one fault's draws never shift the next one's."""
        kinds = self.kinds
        plan = random.Random(self.seed).choices(list(kinds), list(kinds.values()), k=self.n_faults)
        kind_w, target_w = self.columns
        for n, kind in enumerate(plan, 1):
            self.rng = random.Random(f"{self.seed}-{n}")
            fault = Fault(n, kind, "", time.time())
            try:
                getattr(self, "fault_" + kind.replace("-", "_"))(fault)
            except self.fault_errors() as exc:
                fault.note = f"{fault.note} ({exc})".strip()
            fault.end = time.time()
            self.outcome.faults.append(fault)
            self.say(f"fault {n:3d} {kind:{kind_w}s} {fault.target:{target_w}s} {fault.note}")
            self._stop.wait(self.rng.uniform(*self.pause_s))

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"{time.strftime('%T')} {text}", flush=True)

    def spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # the console's processes ---------------------------------------------------------
    def supervise_console(self) -> None:
        """Restart a console process RESTART_S after it exits (systemd's Restart=always)."""
        dead: dict[str, float] = {}
        while not self._stop.is_set():
            for name, proc in list(self.console.procs.items()):
                if proc.poll() is None:
                    continue
                if name not in dead:
                    dead[name] = time.monotonic()
                    if name in self._expected_exit:
                        self._expected_exit.discard(name)
                    else:
                        self.outcome.console_exits.append(
                            f"{time.strftime('%T')} {name} exited with {proc.returncode}"
                        )
                        self.say(f"console process {name} exited by itself ({proc.returncode})")
                elif time.monotonic() - dead[name] >= RESTART_S:
                    del dead[name]
                    self.console.restart(name)
            self._stop.wait(0.1)

    def kill_console(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.console.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        self._expected_exit.add(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait()

    def poll_ticks(self) -> None:
        """The HA runner's tick count, polled in the database: each change is a decision."""
        from django.db import close_old_connections
        from django.db.utils import Error

        from console.ha.models import EngineState

        last = None
        while not self._stop.is_set():
            try:
                ticks = (
                    EngineState.objects.filter(cluster__name=self.cluster)
                    .values_list("ticks", flat=True)
                    .first()
                )
            except Error:
                close_old_connections()
                ticks = last
            if ticks != last:
                self.ticks.append(time.time())
                last = ticks
            self._stop.wait(0.2)

    # the end -------------------------------------------------------------------------
    def settle(self, limit: float = 45.0, stable: float = 5.0, poll: float = 0.25) -> float:
        """Wait (at most `limit`) until every guest runs once for `stable` seconds."""
        began, since = time.monotonic(), None
        while time.monotonic() - began < limit:
            if self.converged_now():
                since = since or time.monotonic()
                if time.monotonic() - since >= stable:
                    break
            else:
                since = None
            time.sleep(poll)
        return time.time()

    def analyse(
        self,
        last_fault: float,
        end: float,
        logs: dict[str, str],
        guests: tuple[str, ...],
        hosts: tuple[str, ...],
    ) -> tuple[watch.Report, list[str]]:
        """The watcher's verdict on the run, and the console processes found dead."""
        report = watch.analyse(
            self.traces(),
            self.power_records(),
            guests,
            hosts,
            last_fault=last_fault,
            end=end,
            ticks=self.ticks,
            ticks_from=self.outcome.faults[0].start if self.outcome.faults else end,
            silence_s=SILENCE_S,
            logs=logs,
            enabled=self.enabled(),
        )
        dead = [n for n, p in self.console.procs.items() if p.poll() is not None]
        return report, dead

    def converged_now(self) -> bool:
        raise NotImplementedError

    def traces(self) -> dict[str, list[dict[str, Any]]]:
        raise NotImplementedError

    def power_records(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def enabled(self) -> list[str]:
        raise NotImplementedError


class Run(Runner):
    guests_all = GUESTS

    def __init__(self, root: Path, seed: int, faults: int, quiet: bool = False) -> None:
        super().__init__(quiet)
        self.root, self.seed, self.n_faults = root, seed, faults
        self.rng = random.Random(seed)
        self.logs = root / "logs"
        self.trace_dir = root / "trace"
        self.hosts_dir = root / "hosts"
        for d in (self.logs, self.trace_dir, self.hosts_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.power = Log(root / "power.jsonl")
        self.redis = Redis(root, free_port())
        self.web_port = free_port()
        self.hosts = {n: Host(n, self.hosts_dir) for n in (*HOSTS, CONSOLE_AGENT)}
        self.api: Api | None = None
        self.service_ids: dict[str, int] = {}
        self.host_ids: dict[str, int] = {}
        self.started_at = time.time()

    # setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        self.redis.start()
        os.environ.update(self.env())
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from django.contrib.auth.models import User

        from console.core.models import ApiToken

        admin = User.objects.create_superuser("chaos-admin", password=uuid.uuid4().hex)
        _, token = ApiToken.issue(admin)
        self.console = make_console(self)
        self.console.start()
        self.console.start_web(self.web_port)
        self.api = Api(f"http://127.0.0.1:{self.web_port}", token)
        self.define_cluster()
        for host in self.hosts.values():
            host.file("power").write_text("on")
        self.spawn(self.supervise_hosts, "hosts")
        self.spawn(self.supervise_console, "console")
        self.say(f"cluster defined; run in {self.root}; waiting for the guests to start")
        wait_for("every guest running once", self.converged_now, 120, 0.5)
        self.spawn(self.poll_ticks, "ticks")
        self.say("converged: faults begin")

    def define_cluster(self) -> None:
        assert self.api is not None
        api = self.api
        cluster = api.ok("POST", "/api/clusters/", {"name": CLUSTER})["id"]
        for name in HOSTS:
            host = api.ok(
                "POST", "/api/hosts/", {"cluster": cluster, "name": name, "address": "127.0.0.1"}
            )
            self.host_ids[name] = host["id"]
            api.ok(
                "POST",
                "/api/fence-devices/",
                {
                    "cluster": cluster,
                    "name": f"power-{name}",
                    "agent": "fence_haven_chaos",
                    "host": host["id"],
                    "plug": name,
                    "parameters": {"chaos_dir": str(self.root)},
                },
            )
        domains = []
        for i, name in enumerate(HOSTS):  # prefer hN, then the next two (ordered)
            members = [
                {"host": self.host_ids[HOSTS[(i + k) % len(HOSTS)]], "priority": k + 1}
                for k in range(3)
            ]
            body = {
                "cluster": cluster,
                "name": f"prefer-{name}",
                "ordered": True,
                "restricted": i == 4,  # one restricted domain: its guests never leave it
                "nofailback": i == 3,
                "members": members,
            }
            domains.append(api.ok("POST", "/api/failover-domains/", body)["id"])
        for i, guest in enumerate(GUESTS):
            body = {
                "cluster": cluster,
                "name": guest,
                "domain_xml": guest_xml(guest),
                "failover_domain": domains[i % len(domains)],
                "recovery": "restart",
                "max_restarts": 0,
                "restart_window_s": 0,
                "migratable": True,
            }
            self.service_ids[guest] = api.ok("POST", "/api/services/", body)["id"]

    # the simulated hosts' power supply ------------------------------------------------
    def agent_argv(self, name: str) -> list[str]:
        argv = [sys.executable, "-m", "agent", "--broker", self.redis.url, "--host", name]
        argv += ["--libvirt-uri", "test:///default", "--fence-path", str(FENCE_DIR)]
        if name == CONSOLE_AGENT:
            argv += ["--heartbeat-interval", "10"]
        return [*argv, "--log-level", "INFO"]

    def supervise_hosts(self) -> None:
        """Boot an agent whenever its host's power is on and none runs (BOOT_S after)."""
        while not self._stop.is_set():
            for host in self.hosts.values():
                with host.locked():
                    self._check_host(host)
            self._stop.wait(0.05)

    def _check_host(self, host: Host) -> None:
        if host.proc is not None and host.proc.poll() is not None:
            self.power(host.name, "exit", pid=host.proc.pid, rc=host.proc.returncode)
            host.proc, host.frozen = None, 0
        if host.proc is None and host.power == "on":
            now = time.monotonic()
            if host.boot_at is None:
                host.boot_at = now + BOOT_S
            elif now >= host.boot_at:
                host.boot_at = None
                env = {**os.environ, "PYTHONPATH": str(ROOT)}
                env["HAVEN_AGENT_TRACE"] = str(self.trace_dir / f"{host.name}.jsonl")
                with open(self.logs / f"agent-{host.name}.log", "ab") as log:
                    host.proc = subprocess.Popen(
                        self.agent_argv(host.name),
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                host.file("pid").write_text(str(host.proc.pid))
                self.power(host.name, "boot", pid=host.proc.pid)

    def power_off(self, name: str) -> int:
        """Power loss: the switch off, the agent SIGKILLed (its guests die with it)."""
        host = self.hosts[name]
        with host.locked():
            host.file("power").write_text("off")
            pid = host.proc.pid if host.proc else 0
            if host.proc is not None and host.proc.poll() is None:
                host.proc.kill()
                host.proc.wait()
            self.power(name, "off", pid=pid)
            return pid

    def power_on(self, name: str) -> None:
        host = self.hosts[name]
        with host.locked():
            if host.power != "on":
                host.file("power").write_text("on")
                self.power(name, "on")

    def freeze(self, name: str) -> int:
        host = self.hosts[name]
        with host.locked():
            if not host.alive() or host.proc is None:
                return 0
            host.proc.send_signal(signal.SIGSTOP)
            host.frozen = host.proc.pid
            self.power(name, "stop", pid=host.frozen)
            return host.frozen

    def thaw(self, name: str, pid: int) -> bool:
        """SIGCONT the agent frozen as `pid`, unless a fence killed it meanwhile."""
        host = self.hosts[name]
        with host.locked():
            if host.proc is None or host.proc.pid != pid or host.proc.poll() is not None:
                return False
            host.proc.send_signal(signal.SIGCONT)
            host.frozen = 0
            self.power(name, "cont", pid=pid)
            return True

    # the truth so far ----------------------------------------------------------------
    def traces(self) -> dict[str, list[dict[str, Any]]]:
        return {h: watch.read_jsonl(self.trace_dir / f"{h}.jsonl") for h in HOSTS}

    def power_records(self) -> list[dict[str, Any]]:
        return watch.read_jsonl(self.root / "power.jsonl")

    def running(self) -> dict[str, list[str]]:
        ivs = watch.intervals(self.traces(), self.power_records(), GUESTS)
        return watch.running_at(ivs, time.time())

    def converged_now(self) -> bool:
        running, enabled = self.running(), self.enabled()
        return all(len(running.get(g, [])) == 1 for g in enabled)

    def enabled(self) -> list[str]:
        """The guests that should run: what the console records as people's intent (a person's
        stop disables a guest; GUESTS when the database does not answer)."""
        return enabled_guests(GUESTS)

    def live_hosts(self) -> list[str]:
        return [n for n in HOSTS if self.hosts[n].alive() and not self.hosts[n].frozen]

    # faults ----------------------------------------------------------------------------
    def _pick_live(self, fault: Fault) -> str | None:
        live = self.live_hosts()
        if not live:
            fault.note = "skipped: no live host"
            return None
        fault.target = self.rng.choice(live)
        return fault.target

    def _fenced_since(self, host: str, since: float) -> bool:
        return any(
            r["event"] == "fence-done" and r["host"] == host and r["t"] >= since
            for r in self.power_records()
        )

    def fault_power_loss(self, fault: Fault) -> None:
        name = self._pick_live(fault)
        if name is None:
            return
        guests = sorted(g for g, hosts in self.running().items() if name in hosts)
        self.power_off(name)
        if not guests:  # a host without guests is not fenced: it only goes offline
            self._stop.wait(MISSED * HEARTBEAT_S + 2)
            fault.note = "no guests there"
        else:
            try:
                wait_for(f"{name} fenced", lambda: self._fenced_since(name, fault.start), 20, 0.2)
                fault.note = f"fenced ({len(guests)} guests there)"
            except TimeoutError:
                fault.note = f"not fenced in 20 s ({len(guests)} guests there)"
        self.power_on(name)  # a reboot fence already did; else a person powers it back

    def fault_hung_host(self, fault: Fault) -> None:
        name = self._pick_live(fault)
        if name is None:
            return
        pid = self.freeze(name)
        self._stop.wait(self.rng.uniform(5, 10))
        fault.note = "resumed" if self.thaw(name, pid) else "fenced while frozen"

    def _storm(self, fault: Fault, stagger: float) -> None:
        live = self.live_hosts()
        count = len(HOSTS) // 2 + 1
        if len(live) < count:
            fault.note = f"skipped: {len(live)} live hosts"
            return
        targets = self.rng.sample(live, count)
        fault.target = ",".join(targets)
        pids = {}
        for name in targets:
            pids[name] = self.freeze(name)
            self._stop.wait(stagger)
        self._stop.wait(self.rng.uniform(5, 10))
        resumed = 0
        for name in targets:
            resumed += self.thaw(name, pids[name])
            self._stop.wait(stagger)
        fault.note = f"{resumed}/{count} resumed, {count - resumed} fenced while frozen"

    def fault_storm(self, fault: Fault) -> None:
        self._storm(fault, 0.0)

    def fault_storm_staggered(self, fault: Fault) -> None:
        self._storm(fault, 0.5)

    def fault_guest_destroyed(self, fault: Fault) -> None:
        from agent.protocol import EXECUTE_TASK, Command, agent_queue
        from console.celery import app

        running = self.running()
        choices = sorted(
            (g, hs[0]) for g, hs in running.items() if len(hs) == 1 and hs[0] in self.live_hosts()
        )
        if not choices:
            fault.note = "skipped: nothing running on a live host"
            return
        guest, host = self.rng.choice(choices)
        fault.target = f"{guest}@{host}"
        command = Command(f"chaos-{uuid.uuid4().hex[:8]}", "destroy", {"guest": guest})
        app.send_task(EXECUTE_TASK, args=[command.to_dict()], queue=agent_queue(host))

    def fault_redis_restart(self, fault: Fault) -> None:
        fault.target = "redis"
        self.redis.kill()
        self._stop.wait(self.rng.uniform(0.5, 1.5))
        self.redis.start()

    def fault_worker_kill(self, fault: Fault) -> None:
        fault.target = "worker"
        self.kill_console("worker")

    def fault_beat_kill(self, fault: Fault) -> None:
        fault.target = "beat"
        self.kill_console("beat")

    def fault_console_kill(self, fault: Fault) -> None:
        others = sorted(set(self.console.procs) - {"worker", "beat", "web"})
        if not others:
            fault.note = "skipped: the console has no other process"
            return
        fault.target = self.rng.choice(others)
        self.kill_console(fault.target)

    def fault_web_restart(self, fault: Fault) -> None:
        fault.target = "web"
        self.kill_console("web", signal.SIGTERM)
        assert self.api is not None
        wait_for("the web back", lambda: self.api and self.api.call("GET", "/healthz"), 30)

    def _service(self, guest: str, kind: str, body: Any = None) -> str:
        assert self.api is not None
        r = self.api.call("POST", f"/api/services/{self.service_ids[guest]}/{kind}/", body or {})
        self.outcome.ops[f"{kind} {r.status_code}"] += 1
        if r.status_code != 202:
            return f"{kind}: {r.status_code} {r.text[:120]}"
        return self._job_end(int(r.json()["id"]), kind)

    def _job_end(self, job: int, kind: str, timeout: float = 20.0) -> str:
        assert self.api is not None
        api = self.api
        try:
            data = wait_for(
                f"job {job}",
                lambda: (d := api.ok("GET", f"/api/jobs/{job}/"))["status"]
                in ("succeeded", "failed", "lost")
                and d,
                timeout,
                0.3,
            )
        except TimeoutError:
            self.outcome.ops[f"{kind} job unfinished"] += 1
            return f"{kind}: job {job} unfinished after {timeout:.0f} s"
        self.outcome.ops[f"{kind} job {data['status']}"] += 1
        return f"{kind}: {data['status']}"

    def _move(self, fault: Fault, kind: str) -> None:
        guest = self.rng.choice(GUESTS)
        target = self.rng.choice([*HOSTS, "best"])
        fault.target = f"{guest}->{target}"
        fault.note = self._service(guest, kind, {"host": target})

    def fault_op_migrate(self, fault: Fault) -> None:
        self._move(fault, "migrate")

    def fault_op_relocate(self, fault: Fault) -> None:
        self._move(fault, "relocate")

    def fault_op_stop_start(self, fault: Fault) -> None:
        guest = fault.target = self.rng.choice(GUESTS)
        notes = [self._service(guest, "stop")]
        self._stop.wait(self.rng.uniform(1, 3))
        deadline = time.monotonic() + 20
        while True:  # a person retries until the console takes the start
            note = self._service(guest, "start")
            if "succeeded" in note or time.monotonic() > deadline:
                break
            self._stop.wait(1)
        fault.note = "; ".join([*notes, note])

    def fault_op_maintenance(self, fault: Fault) -> None:
        assert self.api is not None
        name = fault.target = self.rng.choice(HOSTS)
        path = f"/api/hosts/{self.host_ids[name]}/maintenance/"
        notes = []
        for on in (True, False):
            r = self.api.call("POST", path, {"on": on})
            self.outcome.ops[f"maintenance {r.status_code}"] += 1
            notes.append(
                self._job_end(int(r.json()["id"]), "maintenance")
                if r.status_code == 202
                else f"maintenance: {r.status_code} {r.text[:120]}"
            )
            if on:
                self._stop.wait(self.rng.uniform(3, 6))
        fault.note = "; ".join(notes)

    # the end ---------------------------------------------------------------------------
    def settle(self, limit: float = 45.0, stable: float = 5.0, poll: float = 0.25) -> float:
        """Power every host on, then wait until every guest runs (`Runner.settle`)."""
        for name in HOSTS:
            self.power_on(name)
        return super().settle(limit, stable, poll)

    def report(self, last_fault: float, end: float) -> tuple[watch.Report, list[str]]:
        logs = {p.name: p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log"))}
        return self.analyse(last_fault, end, logs, GUESTS, HOSTS)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for host in self.hosts.values():
            if host.proc is not None and host.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(host.proc.pid, signal.SIGKILL)
                host.proc.wait()
        if self.console is not None:
            self.console.stop()
        self.redis.kill()


def enabled_guests(guests: tuple[str, ...]) -> list[str]:
    from django.db.utils import Error

    from console.services.models import VmService

    try:
        stopped = set(
            VmService.objects.exclude(desired_state="started").values_list("name", flat=True)
        )
    except Error:
        return list(guests)
    return [g for g in guests if g not in stopped]


def make_console(run: Any) -> Any:
    """tests/lab/harness.py's Console (whatever processes it starts), plus the web server,
    remembering how each process was started so the supervisor can start it again."""
    from tests.lab import harness

    class ChaosConsole(harness.Console):
        argv: dict[str, list[str]]
        workers = 2  # as deploy/quickstart and production run them: one may die, one decides

        def _start(self, name: str, argv: list[str]) -> None:
            if not hasattr(self, "argv"):
                self.argv = {}
            self.argv[name] = argv
            super()._start(name, argv)

        def start_web(self, port: int) -> None:
            manage = [sys.executable, str(ROOT / "manage.py"), "runserver", "--noreload"]
            self._start("web", [*manage, f"127.0.0.1:{port}"])

        def restart(self, name: str) -> None:
            self._start(name, self.argv[name])

    env = run.env()
    return ChaosConsole(env["REDIS_URL"], env["DATABASE_URL"], run.logs, **env)


def table(
    run: Any, report: watch.Report, dead: list[str], wait: float, kinds: dict[str, float] = KINDS
) -> str:
    counts = Counter(f.kind for f in run.outcome.faults)
    lines = [f"chaos run: seed {run.seed}, {len(run.outcome.faults)} faults, root {run.root}"]
    lines.append("")
    lines.append(f"  {'fault':<18}{'count':>6}")
    for kind in kinds:
        if counts[kind]:
            lines.append(f"  {kind:<18}{counts[kind]:>6}")
    skipped = sum(1 for f in run.outcome.faults if f.note.startswith("skipped"))
    lines.append(f"  {'(skipped)':<18}{skipped:>6}")
    converge = "never" if report.converge_s is None else f"{report.converge_s:.1f} s"
    rows = [
        ("double runs", str(len(report.double_runs))),
        ("starts before fence", str(len(report.early_starts))),
        ("healthy hosts fenced", str(len(report.healthy_fenced))),
        ("guests lost", str(len(report.lost))),
        ("converged after last fault", converge),
        ("longest HA stall", f"{report.ha_stall_s:.1f} s"),
        ("console processes left dead", str(len(dead))),
        ("console processes crashed", str(len(run.outcome.console_exits))),
        ("fences (all)", str(report.fences)),
        ("fences during a storm", str(report.storm_fences)),
        ("tracebacks in logs", str(len(report.tracebacks))),
        ("  from Haven's code", str(len(report.haven_tracebacks))),
    ]
    lines.append("")
    lines += [f"  {k:<30}{v:>10}" for k, v in rows]
    if run.outcome.ops:
        lines.append("")
        lines.append(
            "  operations: " + ", ".join(f"{k} x{v}" for k, v in sorted(run.outcome.ops.items()))
        )
    t0 = run.outcome.faults[0].start if run.outcome.faults else run.started_at

    def at(t: float) -> str:
        return f"+{t - t0:.1f}s"

    for o in report.double_runs:
        lines.append(f"  DOUBLE RUN {o.guest} on {o.hosts} {at(o.start)} for {o.seconds:.3f} s")
    for e in report.early_starts:
        lines.append(
            f"  START BEFORE FENCE {e.guest} on {e.host} {at(e.at)}: {e.previous} "
            f"({e.previous_state}) neither fenced nor reported it stopped"
        )
    for h in report.healthy_fenced:
        lines.append(f"  HEALTHY HOST FENCED {h.host} {at(h.at)} ({h.action})")
    if report.lost:
        lines.append(f"  GUESTS LOST {', '.join(report.lost)}")
    disabled = sorted(set(run.guests_all) - set(run.enabled()))
    if disabled:
        lines.append(f"  (left stopped by people's commands, not counted: {', '.join(disabled)})")
    if report.ha_stall_at is not None and report.ha_stall_s > 5:
        lines.append(f"  HA STALL {report.ha_stall_s:.1f} s from {at(report.ha_stall_at)}")
    for name in dead:
        lines.append(f"  CONSOLE PROCESS LEFT DEAD {name}")
    for line in run.outcome.console_exits:
        lines.append(f"  CONSOLE PROCESS CRASHED {line}")
    haven = set(report.haven_tracebacks)
    for tb, count in Counter(report.tracebacks).most_common():
        whose = "HAVEN TRACEBACK" if tb in haven else "TRACEBACK (a library's)"
        lines.append(f"  {whose} x{count} {tb}")
    verdict = safety(run, report, dead)
    lines.append("")
    lines.append("  SAFETY: " + ("clean" if not verdict else "; ".join(verdict)))
    lines.append(f"  (times are from the first fault; settle wait {wait:.1f} s)")
    return "\n".join(lines)


def safety(run: Any, report: watch.Report, dead: list[str]) -> list[str]:
    out = report.safety()
    if dead:
        out.append(f"console process(es) left dead: {', '.join(dead)}")
    if run.outcome.console_exits:
        out.append(f"{len(run.outcome.console_exits)} console process crash(es)")
    return out


def summary(run: Any, report: watch.Report, dead: list[str]) -> dict[str, Any]:
    return {
        "seed": run.seed,
        "faults": dict(Counter(f.kind for f in run.outcome.faults)),
        "double_runs": len(report.double_runs),
        "starts_before_fence": len(report.early_starts),
        "healthy_hosts_fenced": len(report.healthy_fenced),
        "guests_lost": report.lost,
        "converge_s": report.converge_s,
        "ha_stall_s": report.ha_stall_s,
        "console_left_dead": dead,
        "console_crashes": run.outcome.console_exits,
        "fences": report.fences,
        "storm_fences": report.storm_fences,
        "tracebacks": report.tracebacks,
        "haven_tracebacks": report.haven_tracebacks,
        "safety": safety(run, report, dead),
        "fault_log": [f.__dict__ for f in run.outcome.faults],
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deploy/chaos", description=__doc__.split("\n")[0] if __doc__ else None
    )
    p.add_argument("--faults", type=int, default=30, help="how many faults (default %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default %(default)s)")
    p.add_argument("--root", type=Path, help="state directory (default var/chaos/seed-S)")
    p.add_argument("--lab", action="store_true", help="on the namespace lab (root, under flock)")
    p.add_argument("--quiet", action="store_true", help="print only the table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.faults < 1:
        parser().error("--faults must be at least 1")
    if args.lab:
        from bench import chaos_lab

        return chaos_lab.main(args)
    root = (args.root or ROOT / "var" / "chaos" / f"seed-{args.seed}").resolve()
    return execute(lambda r: Run(r, args.seed, args.faults, args.quiet), root, KINDS)


def execute(make: Callable[[Path], Any], root: Path, kinds: dict[str, float]) -> int:
    """One chaos run in a fresh ``root``: set up, inject, settle, judge; its table printed and
    kept with its summary; exit status 1 if safety failed (both runs: simulated and lab)."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    run = make(root)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop every process it started
    try:
        run.setup()
        run.inject()
        last_fault = run.outcome.faults[-1].end
        run.say("faults done: waiting for every guest to run once")
        end = run.settle()
        report, dead = run.report(last_fault, end)
    finally:
        run.stop()
    text = table(run, report, dead, end - last_fault, kinds)
    print(text, flush=True)
    (root / "table.txt").write_text(text + "\n")
    (root / "summary.json").write_text(json.dumps(summary(run, report, dead), indent=1))
    return 1 if safety(run, report, dead) else 0


if __name__ == "__main__":
    sys.exit(main())
