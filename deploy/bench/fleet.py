"""A simulated fleet against the real console, at size — numbers, not a test.

    .venv/bin/python deploy/bench/fleet.py [--sizes 8x10,32x10,128x10,8x80,32x80,128x80]
                                           [--seconds 60] [--pages] [--json]
                                           [--keep-logs DIR]

    # the 10-minute run at size, every page loaded in a loop meanwhile (about 13 minutes)
    .venv/bin/python deploy/bench/fleet.py --sizes 8x80,128x80 --seconds 600 --pages

Each size runs in a process of its own, on a throw-away SQLite database and a Redis of its own
(a free port, append-only file as deploy/start-services runs it). The console's processes are
the real ones, started as deploy/quickstart starts them: two Celery workers of queue
``console`` (prefork, ``--concurrency 1``), Celery beat and the ingest drainer
``manage.py haven_ingest`` (not under deploy/supervise.py: nothing is restarted here).

The hosts are **simulated** (`FleetAgents`, one thread of this process): each of N hosts pushes
a real protocol-v2 heartbeat (agent/protocol.py ``Heartbeat``, its M guests, send time and
sequence number) onto its own inbound list ``haven:in:<host>`` once a second, spread over the
second, and answers the commands the console queues on ``agent.<host>`` (define, start,
shutdown, destroy, migrate, fence: all succeed at once; a fenced host goes dark). Its guests are
names, nothing runs.

The cluster (hosts with a fence device each, N x M services already started on their hosts)
is written straight into the database; the engine adopts the guests the heartbeats report.
After it has settled, for ``--seconds``: a guest crash every ``--crash-every`` seconds (the
agent's ``crashed`` lifecycle event), and at the end one host lost with all its guests (it
stops heartbeating; the console fences it; its guests start elsewhere). Printed per size:

- ingest lag (console receive - agent ``sent_at`` of every heartbeat seen in the store) p50/p95,
  and the largest inbound backlog;
- runner tick p50/p95 (the runner's own durations), the same of its CPU time (the ticking
  thread's: on a loaded machine the wall time mostly measures waiting for a CPU) and ticks per
  second;
- crash -> start dispatched (the crashed event pushed -> its guest's ``start`` in an agent's
  queue) p50/p95/max, and how many crashes got no start within 30 s;
- host lost -> fence dispatched, and fence succeeded -> every one of its guests' starts
  dispatched;
- healthy hosts declared unreachable and healthy hosts fenced (must be 0);
- the console queue's depth (Celery ``console``) p95/max, CPU of each console process
  (% of one core over the measured window, children included) and its largest RSS;
- the 1-minute load average at the window's start and end (the machine may be shared: compare
  the numbers with it), and how late the simulated agents themselves sent their heartbeats
  (p95/max after they were due: a starved bench process shows here, not as the console's lag)
  and how long after its ``sent_at`` each heartbeat was in Redis (p95: the bench's own share
  of the ingest lag, which counts from ``sent_at``).

``--pages`` also starts the web process as deploy/quickstart does (``manage.py runserver
--noreload``) and, for the whole window, a simulated person (`PageLoop`, a thread of this
process) logged in through the login form loads every page and API list of `PAGES` in turn
over HTTP, one request at a time: printed per page, loads, p50/p95 and the requests that did
not answer 200 (the pages' own speed and query counts: deploy/bench/pages.py).

``--stall S`` freezes the drainer (SIGSTOP) for S seconds halfway through: the console is
behind on its heartbeats, so it must raise an alarm and fence nobody. ``--json`` prints one
JSON object per size instead of the table (tests/console/test_fleet.py). ``--keep-logs DIR``
keeps the console processes' logs (a worker logs every tick over 250 ms with where its CPU time
went: ``grep "slow tick" DIR/*/worker*``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT, ROOT / "deploy"):  # the project, and deploy/bench as the package `bench`
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from agent.protocol import (  # noqa: E402
    Event,
    GuestState,
    Heartbeat,
    Result,
    agent_queue,
    inbound_key,
    to_json,
)

CLUSTER = "fleet"
GUEST_MIB = 1024
HOST_MIB = 262144


class Looping:
    """A daemon thread of its own that runs ``_loop`` until ``stop`` (which waits for it at
    most ``join_s``); ``_loop`` ends once ``self._stop`` is set."""

    join_s = 10.0

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.join_s)

    def _loop(self) -> None:
        raise NotImplementedError


class FleetAgents(Looping):
    """The agent side, simulated: `hosts` (name -> its guests) heartbeat at 1 Hz through Redis
    and answer their commands. One thread; `on_command(t, host, command)` sees every command
    as it is taken off a queue. Replaceable by any fake agents that speak the same wire."""

    def __init__(
        self,
        r: Any,
        hosts: dict[str, list[str]],
        console_agent: str,
        on_command: Callable[[float, str, dict[str, Any]], None] = lambda t, h, c: None,
        interval_s: float = 1.0,
    ) -> None:
        self.r, self.interval_s, self.on_command = r, interval_s, on_command
        self.running = {h: set(g) for h, g in hosts.items()}
        self.up = set(hosts)
        self.console_agent = console_agent
        self.boot = {h: uuid.uuid4().hex[:8] for h in hosts}
        self.seq = dict.fromkeys(hosts, 0)
        self.sent = 0
        #: each host's heartbeat as a dict, kept while its guests stay the same (encoding 80
        #: GuestStates per beat starved this process of CPU on a loaded machine)
        self._beats: dict[str, tuple[frozenset[str], dict[str, Any]]] = {}
        #: how long after its ``sent_at`` each heartbeat was in Redis (the pipeline returned):
        #: this process's own share of the ingest lag
        self.push_delay: list[float] = []
        #: the simulated agents' own lateness: how long after it was due each heartbeat went
        #: out (this process starved of CPU shows here, not as the console's fault)
        self.late: list[float] = []
        self.lock = threading.Lock()
        super().__init__("fleet")

    # --- life ---------------------------------------------------------------------------
    def _loop(self) -> None:
        names = sorted(self.running)
        offsets = {h: i * self.interval_s / len(names) for i, h in enumerate(names)}
        epoch = time.monotonic()
        due = {h: epoch + offsets[h] for h in names}
        while not self._stop.is_set():
            now = time.monotonic()
            beating = [h for h in names if due[h] <= now]
            pipe = self.r.pipeline(transaction=False)
            stamped = []
            with self.lock:
                for h in beating:
                    self.late.append(now - due[h])
                    due[h] += self.interval_s * max(1, int((now - due[h]) / self.interval_s) + 1)
                    if h in self.up:
                        text, t = self._heartbeat(h)
                        pipe.rpush(inbound_key(h), text)
                        stamped.append(t)
                        self.sent += 1
            for h in [*names, self.console_agent]:
                pipe.rpop(agent_queue(h), 100)
            answers = pipe.execute()
            taken = time.time()
            self.push_delay.extend(taken - t for t in stamped)
            for h, raw in zip(
                [*names, self.console_agent], answers[-len(names) - 1 :], strict=True
            ):
                for item in raw or []:
                    self._command(taken, h, item)
            self._stop.wait(0.005)

    # --- what a host says ---------------------------------------------------------------
    def _heartbeat(self, host: str) -> tuple[str, float]:
        """The host's next heartbeat (JSON text) and its send time."""
        self.seq[host] += 1
        running = frozenset(self.running[host])
        kept = self._beats.get(host)
        if kept is None or kept[0] != running:
            guests = sorted(running)
            beat = Heartbeat(
                host=host,
                agent_version="fleet-sim",
                seq=0,
                interval_s=self.interval_s,
                libvirt_connected=True,
                host_uuid=f"uuid-{host}",
                cpus=64,
                memory_total_mib=HOST_MIB,
                memory_free_mib=HOST_MIB - GUEST_MIB * len(guests) - 4096,
                guests=[GuestState(g, "", "running") for g in guests],
                boot=self.boot[host],
            )
            kept = self._beats[host] = (running, json.loads(to_json(beat)))
        t = time.time()
        return json.dumps({**kept[1], "seq": self.seq[host], "ts": t, "sent_at": t}), t

    def _event(self, host: str, guest: str, state: str) -> None:
        self.seq[host] += 1
        t = time.time()
        message = Event(host, "lifecycle", guest, "", state, state, self.seq[host], t, t)
        self.r.rpush(inbound_key(host), to_json(message))

    def _result(self, host: str, command: dict[str, Any], ok: bool = True) -> None:
        message = Result(host, command["id"], command["kind"], ok, sent_at=time.time())
        self.r.rpush(inbound_key(host), to_json(message))

    def _command(self, t: float, host: str, raw: str) -> None:
        envelope = json.loads(raw)  # kombu's Redis message: the Celery body in base64
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        command = args[0]
        self.on_command(t, host, command)
        kind, a = command["kind"], command.get("args") or {}
        with self.lock:
            if host != self.console_agent and host not in self.up:
                return  # a dark host answers nothing
            if kind == "start":
                self.running[host].add(a["guest"])
                self._event(host, a["guest"], "started")
            elif kind in ("shutdown", "destroy"):
                self.running[host].discard(a["guest"])
                self._event(host, a["guest"], "stopped")
            elif kind == "migrate":
                uri = str(a.get("dest_uri", ""))
                target = next((h for h in self.running if f"//{h}/" in uri), "")
                self.running[host].discard(a["guest"])
                if target in self.running:
                    self.running[target].add(a["guest"])
                self._event(host, a["guest"], "migrated")
            elif kind == "fence":
                victim = str((a.get("params") or {}).get("plug", ""))
                if a.get("action") != "status":
                    self._power_off(victim)
            self._result(host, command)

    # --- what happens to a host -----------------------------------------------------------
    def _power_off(self, host: str) -> None:
        if host in self.up:
            self.up.discard(host)
            self.running[host].clear()

    def lose(self, host: str) -> list[str]:
        """Power loss: the host goes dark with its guests; returns them."""
        with self.lock:
            guests = sorted(self.running[host])
            self._power_off(host)
            return guests

    def crash(self, host: str, guest: str) -> None:
        with self.lock:
            self.running[host].discard(guest)
            self._event(host, guest, "crashed")

    def where(self, guest: str) -> list[str]:
        with self.lock:
            return [h for h, gs in self.running.items() if guest in gs and h in self.up]


# --- one size, in a process of its own ------------------------------------------------------


#: how often the measured window's ticks are collected (well inside TICKS_KEPT ticks)
TICK_SAMPLE_S = 20.0


def _new_head(before: list[str], now: list[str], overlap: int = 8) -> int:
    """How many entries were pushed onto the head of a capped Redis list (LPUSH, LTRIM)
    between its reads ``before`` and ``now``: where ``before``'s head stands in ``now``."""
    head = before[:overlap]
    if not head:
        return len(now)
    for at in range(len(now) - len(head) + 1):
        if now[at : at + len(head)] == head:
            return at
    return len(now)  # more than the list keeps came since: all of it is new


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _group(leader: int) -> Iterator[tuple[Path, list[str]]]:
    """Every process in ``leader``'s process group: its /proc folder and the fields of its
    ``stat`` after the command name (a process gone meanwhile is left out)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == leader:  # pgrp
            yield entry, fields


def cpu_seconds(leader: int) -> float:
    """utime + stime of every process in `leader`'s process group (the console processes run
    in sessions of their own: a prefork worker's children are counted)."""
    ticks = sum(int(fields[11]) + int(fields[12]) for _, fields in _group(leader))
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mib(leader: int) -> float:
    """Resident memory of every process in `leader`'s process group (MiB)."""
    total = 0
    for entry, _ in _group(leader):
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])  # kB
    return total / 1024


def build(n_hosts: int, per_host: int) -> tuple[int, dict[str, list[str]]]:
    from console.clusters.models import Cluster, FenceDevice, Host
    from console.services.models import VmService

    cluster = Cluster.objects.create(name=CLUSTER)
    names = [f"h{i:03d}" for i in range(n_hosts)]
    hosts = Host.objects.bulk_create(
        Host(
            cluster=cluster,
            name=n,
            address=f"10.0.{i // 250}.{i % 250 + 1}",
            libvirt_uri=f"qemu+tcp://{n}/system",
        )
        for i, n in enumerate(names)
    )
    FenceDevice.objects.bulk_create(
        FenceDevice(cluster=cluster, name=f"power-{h.name}", agent="fence_dummy", host=h,
                    plug=h.name)
        for h in hosts
    )  # fmt: skip
    guests: dict[str, list[str]] = {n: [] for n in names}
    rows = []
    for i in range(n_hosts * per_host):
        host = hosts[i % n_hosts]
        name = f"g{i:05d}"
        guests[host.name].append(name)
        xml = (
            f"<domain type='kvm'><name>{name}</name>"
            f"<memory unit='MiB'>{GUEST_MIB}</memory></domain>"
        )
        rows.append(
            VmService(cluster=cluster, name=name, domain_xml=xml, memory_mb=GUEST_MIB,
                      host=host, state="started", desired_state="started")
        )  # fmt: skip
    VmService.objects.bulk_create(rows, batch_size=2000)
    return cluster.pk, guests


def make_console(env: dict[str, str], logs: Path, web_port: int | None = None) -> Any:
    """The console's processes as deploy/quickstart starts them; with `web_port`, its web
    process too (``manage.py runserver --noreload``, threaded, as quickstart runs it)."""
    from tests.lab import harness

    class QuickstartConsole(harness.Console):
        workers = 2  # deploy/quickstart: two workers, prefork, one process each
        worker_pool = ("--concurrency", "1")

        def start(self) -> None:
            super().start()
            if web_port is not None:
                address = f"127.0.0.1:{web_port}"
                # at a lower priority than the HA loop, as quickstart and the unit run it
                runserver = [sys.executable, "manage.py", "runserver", address, "--noreload"]
                self._start("web", ["nice", "-n", "5", *runserver])

    return QuickstartConsole(env["REDIS_URL"], env["DATABASE_URL"], logs, **env)


#: every page and API list a person loads, with the fleet's cluster and its first host filled in
PAGES = {
    "home": "/",
    "cluster page": "/clusters/{cluster}/",
    "live fragment": "/clusters/{cluster}/live/",
    "cluster page, red only": "/clusters/{cluster}/?state=red",
    "host page": "/clusters/{cluster}/hosts/{host}/",
    "policy": "/clusters/{cluster}/policy/",
    "fence devices": "/clusters/{cluster}/fence/",
    "incidents": "/events/incidents/",
    "event log": "/events/",
    "jobs": "/jobs/",
    "GET /api/services/": "/api/services/?limit=50",
    "GET /api/hosts/": "/api/hosts/?limit=200",
}
#: an admin: the policy panel is read by admins only (the loop only reads, never changes)
VIEWER, VIEWER_PASSWORD = "fleet-admin", "fleet-admin-password"


class PageLoop(Looping):
    """A person at a browser, simulated: logs in through the login form of the real web
    process, then loads every page of `PAGES` in turn, over and over, one request at a time
    (HTTP, the whole request: server, middleware, queries, templates)."""

    join_s = 120.0  # a page may take long under load

    def __init__(self, base: str, urls: dict[str, str]) -> None:
        import requests

        self.base, self.urls = base, urls
        self.http = requests.Session()
        self.times: dict[str, list[float]] = {label: [] for label in urls}
        self.errors: dict[str, list[str]] = {}
        super().__init__("pages")

    def login(self) -> None:
        import re

        form = self.http.get(f"{self.base}/login/", timeout=60)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        if token is None:
            raise RuntimeError(f"no login form at {self.base}/login/ ({form.status_code})")
        data = {"username": VIEWER, "password": VIEWER_PASSWORD}
        data["csrfmiddlewaretoken"] = token.group(1)
        done = self.http.post(f"{self.base}/login/", data=data, timeout=60, allow_redirects=False)
        if done.status_code != 302:
            raise RuntimeError(f"login as {VIEWER} failed: HTTP {done.status_code}")

    def _loop(self) -> None:
        while not self._stop.is_set():
            for label, url in self.urls.items():
                if self._stop.is_set():
                    return
                t0 = time.monotonic()
                try:
                    answer = self.http.get(self.base + url, timeout=120, allow_redirects=False)
                    status = str(answer.status_code)
                except Exception as exc:  # the server away or too slow: counted, not fatal
                    status = type(exc).__name__
                if status == "200":
                    self.times[label].append(time.monotonic() - t0)
                else:
                    self.errors.setdefault(label, []).append(status)

    def summary(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for label, times in self.times.items():
            ms = [t * 1000 for t in times]
            out[label] = {
                "n": len(ms),
                "p50_ms": round(pct(ms, 0.5), 1) if ms else None,
                "p95_ms": round(pct(ms, 0.95), 1) if ms else None,
                "errors": self.errors.get(label, []),
            }
        return out


def make_viewer() -> None:
    from django.contrib.auth.models import Group, User

    user = User.objects.create_user(VIEWER, password=VIEWER_PASSWORD)
    user.groups.add(Group.objects.get_or_create(name="admin")[0])


def run_one(
    n_hosts: int,
    per_host: int,
    seconds: float,
    crash_every: float,
    root: Path,
    stall: float = 0.0,
    pages: bool = False,
) -> dict[str, Any]:
    from bench.chaos import Redis, free_port, wait_for

    redis_server = Redis(root, free_port())
    redis_server.start()
    env = {
        "REDIS_URL": redis_server.url,
        "DATABASE_URL": f"sqlite:///{root / 'db.sqlite3'}",
        "HAVEN_VAR_DIR": str(root / "var"),
        "HAVEN_LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "console.settings",
    }
    os.environ.update(env)
    import django

    django.setup()
    import redis
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    cluster_id, guests = build(n_hosts, per_host)
    make_viewer()
    from console.clusters.models import Host
    from console.engine.settings import Settings as EngineSettings
    from console.events.models import Event as LogEvent
    from console.ha.models import EngineState
    from console.ha.store import RedisStore
    from console.services.models import VmService

    r: Any = redis.Redis.from_url(redis_server.url, decode_responses=True)
    store = RedisStore(r)
    starts: dict[str, list[float]] = {}  # guest -> when each start was taken off a queue
    fences: list[tuple[float, str, str]] = []  # (t, runner, victim)
    defines: list[float] = []  # when each define was taken off a queue
    defined: dict[str, list[float]] = {}  # guest -> when each of its defines was taken

    def on_command(t: float, host: str, command: dict[str, Any]) -> None:
        a = command.get("args") or {}
        if command["kind"] == "start":
            starts.setdefault(a["guest"], []).append(t)
        elif command["kind"] == "define":
            defines.append(t)
            name = re.search(r"<name>([^<]+)</name>", str(a.get("xml", "")))
            if name:
                defined.setdefault(name.group(1), []).append(t)
        elif command["kind"] == "fence" and a.get("action") != "status":
            fences.append((t, host, str((a.get("params") or {}).get("plug", ""))))

    fleet = FleetAgents(r, guests, settings.HAVEN_CONSOLE_AGENT, on_command)
    web_port = free_port() if pages else None
    console = make_console(env, root / "logs", web_port)
    out: dict[str, Any] = {"hosts": n_hosts, "guests": n_hosts * per_host}
    page_loop: PageLoop | None = None
    rng = random.Random(n_hosts * 1000 + per_host)
    lost: set[str] = set()
    try:
        fleet.start()
        console.start()
        t_setup = time.monotonic()

        def settled() -> bool:
            state = EngineState.objects.filter(cluster_id=cluster_id).first()
            started = VmService.objects.filter(cluster_id=cluster_id, state="started").count()
            return bool(state and state.ticks >= 3 and started == n_hosts * per_host)

        wait_for("the engine to adopt every guest", settled, 600, 0.5)
        out["settle_s"] = round(time.monotonic() - t_setup, 1)
        time.sleep(3)  # past the view's first liveness window
        if web_port is not None:
            import requests

            base = f"http://127.0.0.1:{web_port}"
            wait_for("the web process", lambda: _answers(requests, f"{base}/healthz"), 120, 0.5)
            first_host = Host.objects.filter(cluster_id=cluster_id).order_by("name").first()
            assert first_host is not None
            page_loop = PageLoop(
                base,
                {k: u.format(cluster=cluster_id, host=first_host.pk) for k, u in PAGES.items()},
            )
            page_loop.login()

        # --- the measured window ------------------------------------------------------------
        stop = threading.Event()
        lags: list[float] = []
        backlog: list[int] = []
        queue: list[int] = []

        rss: dict[str, float] = {}
        # every tick of the window: the console keeps only its last TICKS_KEPT (a few
        # minutes' worth), so they are collected every TICK_SAMPLE_S as they come
        tick_lists: dict[str, list[str]] = {"": [], ":cpu": []}
        tick_heads: dict[str, list[str]] = {"": [], ":cpu": []}

        def collect_ticks() -> None:
            for suffix, got in tick_lists.items():
                now: Any = r.lrange(f"haven:ticks:{cluster_id}{suffix}", 0, -1)
                got.extend(reversed(now[: _new_head(tick_heads[suffix], now)]))
                tick_heads[suffix] = now

        def sample() -> None:
            seen: dict[str, float] = {}
            rss_at = ticks_at = 0.0
            while not stop.is_set():
                if time.monotonic() - ticks_at > TICK_SAMPLE_S:
                    ticks_at = time.monotonic()
                    collect_ticks()
                if time.monotonic() - rss_at > 2.0:  # /proc is read every 2 s, not 4 times a second
                    rss_at = time.monotonic()
                    for name, p in console.procs.items():
                        rss[name] = max(rss.get(name, 0.0), rss_mib(p.pid))
                for name, raw in r.hgetall("haven:hb").items():
                    received, sent = _times(raw)
                    if seen.get(name) != sent:
                        seen[name] = sent
                        lags.append(received - sent)
                backlog.append(store.ingest_status().backlog)
                queue.append(int(r.llen("console")))
                stop.wait(0.25)

        r.delete(f"haven:ticks:{cluster_id}", f"haven:ticks:{cluster_id}:cpu")
        fleet.late.clear()
        fleet.push_delay.clear()
        cpu0 = {name: cpu_seconds(p.pid) for name, p in console.procs.items()}
        t0 = time.monotonic()
        load_before = os.getloadavg()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        if page_loop is not None:
            page_loop.start()
        crashes: list[tuple[float, str]] = []
        # a crash sooner after the guest's last one is a streak's next, whose restart backs
        # off by design: the engine's own default, not a copy of it
        stable_after_s = EngineSettings().stable_after_s
        stalled = not stall
        while time.monotonic() - t0 < seconds:
            time.sleep(crash_every)
            if not stalled and time.monotonic() - t0 > seconds / 2:
                # the console made to lag: its drainer frozen while the hosts go on beating
                stalled = True
                os.killpg(console.procs["ingest"].pid, signal.SIGSTOP)
                time.sleep(stall)
                os.killpg(console.procs["ingest"].pid, signal.SIGCONT)
                continue
            # a guest that crashed within stable_after_s (60 s) backs off by design (1 s, 2 s,
            # ...): only first crashes of a streak are measured
            recent = {g for t, g in crashes if time.time() - t < stable_after_s + 1}
            running = [(h, g) for h in sorted(fleet.up) for g in sorted(fleet.running[h])]
            candidates = [(h, g) for h, g in running if g not in recent]
            if candidates:
                host, guest = rng.choice(candidates)
                t = time.time()
                fleet.crash(host, guest)
                crashes.append((t, guest))
        # one host lost, with all its guests (the pages still loading)
        victim = rng.choice(sorted(fleet.up))
        t_lost = time.time()
        victim_guests = fleet.lose(victim)
        lost.add(victim)
        wait_for(f"{victim} fenced", lambda: any(v == victim for _, _, v in fences), 60, 0.05)
        t_fenced = next(t for t, _, v in fences if v == victim)

        def all_started() -> bool:
            return all(any(t > t_fenced for t in starts.get(g, [])) for g in victim_guests)

        wait_for(f"{victim}'s guests started elsewhere", all_started, 60, 0.05)
        firsts = sorted(min(t for t in starts[g] if t > t_fenced) for g in victim_guests)
        t_all = firsts[-1]
        after_fence = [t for t in defines if t > t_fenced]
        # when the console committed each stage (the step rows' dispatch time), against when
        # the simulated agents took the commands off their queues (above)
        from console.jobs.models import JobStep

        def committed(kind: str) -> list[float]:
            rows = JobStep.objects.filter(kind=kind, args__guest__in=victim_guests)
            if kind == "define":
                rows = JobStep.objects.filter(kind=kind, job__params__service__in=victim_guests)
            at = [d.timestamp() for d in rows.values_list("dispatched", flat=True) if d]
            return sorted(t - t_fenced for t in at if t > t_fenced)

        define_at, start_at = committed("define"), committed("start")
        wall = time.monotonic() - t0
        load_after = os.getloadavg()
        stop.set()
        sampler.join(5)
        if page_loop is not None:
            page_loop.stop()
        cpu = {
            name: round((cpu_seconds(p.pid) - cpu0[name]) / wall * 100, 1)
            for name, p in console.procs.items()
        }
        # every crashed guest restarted: a start dispatched and the guest running somewhere
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(fleet.where(g) for _, g in crashes):
            time.sleep(0.2)
        crash_lat, crash_define = [], []
        never = 0
        for t, g in crashes:
            later = [s for s in starts.get(g, []) if s >= t]
            if later:
                crash_lat.append(later[0] - t)
            else:
                never += 1
            first_define = [d for d in defined.get(g, []) if d >= t]
            if first_define:
                crash_define.append(first_define[0] - t)
        collect_ticks()
        tick_s = [float(v) for v in tick_lists[""]]
        tick_cpu = [float(v) for v in tick_lists[":cpu"]]
        unreachable = set(
            LogEvent.objects.filter(verb="host-state", data__new="unreachable").values_list(
                "object_name", flat=True
            )
        )
        alarms = list(
            LogEvent.objects.filter(verb="alarm", result="failed").values_list("message", flat=True)
        )
        ms = [v * 1000 for v in lags]
        out.update(
            stall_s=stall,
            alarms=alarms,
            window_s=round(wall, 1),
            heartbeats=len(ms),
            ingest_lag_ms_p50=round(statistics.median(ms), 1) if ms else None,
            ingest_lag_ms_p95=round(pct(ms, 0.95), 1) if ms else None,
            backlog_max=max(backlog or [0]),
            ticks=len(tick_s),
            ticks_per_s=round(len(tick_s) / wall, 2),
            tick_ms_p50=round(pct(tick_s, 0.5) * 1000, 1) if tick_s else None,
            tick_ms_p95=round(pct(tick_s, 0.95) * 1000, 1) if tick_s else None,
            tick_cpu_ms_p50=round(pct(tick_cpu, 0.5) * 1000, 1) if tick_cpu else None,
            tick_cpu_ms_p95=round(pct(tick_cpu, 0.95) * 1000, 1) if tick_cpu else None,
            tick_ms_p99=round(pct(tick_s, 0.99) * 1000, 1) if tick_s else None,
            tick_ms_max=round(max(tick_s) * 1000, 1) if tick_s else None,
            ticks_over_250ms=sum(1 for t in tick_s if t > 0.25),
            crashes=len(crashes),
            crash_to_start_ms_p50=round(statistics.median(crash_lat) * 1000, 1)
            if crash_lat
            else None,
            crash_to_start_ms_p95=round(pct(crash_lat, 0.95) * 1000, 1) if crash_lat else None,
            crash_to_start_ms_max=round(max(crash_lat) * 1000, 1) if crash_lat else None,
            crashes_without_start=never,
            # the first hop: the crashed event -> its guest's define taken by the agent
            crash_to_define_ms_p50=round(statistics.median(crash_define) * 1000, 1)
            if crash_define
            else None,
            crash_to_define_ms_max=round(max(crash_define) * 1000, 1) if crash_define else None,
            crashes_not_running=sum(1 for _, g in crashes if not fleet.where(g)),
            host_lost_to_fence_s=round(t_fenced - t_lost, 2),
            fence_to_all_starts_s=round(t_all - t_fenced, 2),
            # where the time goes: the defines (stage 1) leave in one tick, each start (stage 2)
            # only once its define's result was filed
            fence_to_first_define_s=round(after_fence[0] - t_fenced, 2) if after_fence else None,
            fence_to_last_define_s=round(after_fence[-1] - t_fenced, 2) if after_fence else None,
            fence_to_first_start_s=round(firsts[0] - t_fenced, 2),
            # the console's side: when the defines' and the starts' dispatch was committed
            fence_to_defines_committed_s=[round(define_at[0], 2), round(define_at[-1], 2)]
            if define_at
            else None,
            fence_to_starts_committed_s=[round(start_at[0], 2), round(start_at[-1], 2)]
            if start_at
            else None,
            lost_guests=len(victim_guests),
            healthy_unreachable=sorted(unreachable - lost),
            healthy_fenced=sorted({v for _, _, v in fences} - lost),
            console_queue_p95=pct([float(q) for q in queue], 0.95) if queue else None,
            console_queue_max=max(queue or [0]),
            cpu_pct=cpu,
            heartbeats_sent=fleet.sent,
            fleet_late_ms_p95=round(pct(fleet.late, 0.95) * 1000, 1) if fleet.late else None,
            fleet_push_ms_p95=round(pct(fleet.push_delay, 0.95) * 1000, 1)
            if fleet.push_delay
            else None,
            fleet_late_ms_max=round(max(fleet.late) * 1000, 1) if fleet.late else None,
            rss_mib={name: round(v, 1) for name, v in rss.items()},
            load_avg_1m=[round(load_before[0], 2), round(load_after[0], 2)],
            pages=page_loop.summary() if page_loop is not None else {},
        )
        return out
    finally:
        fleet.stop()
        console.stop()
        redis_server.kill()


_RECEIVED = re.compile(r'^\{"received": ([^,}]+)')
_SENT_AT = re.compile(r'"sent_at": ([^,}]+)')


def _times(stored: str) -> tuple[float, float]:
    """A stored heartbeat's receive time and its ``sent_at``, read without parsing its guests
    (read four times a second for every host, parsing them cost this process its CPU)."""
    received, sent = _RECEIVED.search(stored), _SENT_AT.search(stored)
    if received is None or sent is None:
        data = json.loads(stored)
        return float(data["received"]), float(data["hb"]["sent_at"])
    return float(received.group(1)), float(sent.group(1))


def _span(pair: list[float] | None) -> str:
    return "-" if not pair else f"{pair[0]}-{pair[1]}"


def _answers(requests: Any, url: str) -> bool:
    try:
        return bool(requests.get(url, timeout=5).status_code == 200)
    except Exception:
        return False


def table(results: list[dict[str, Any]]) -> str:
    rows: list[tuple[str, Callable[[dict[str, Any]], object]]] = [
        (
            "ingest lag p50 / p95 (ms)",
            lambda o: f"{o['ingest_lag_ms_p50']} / {o['ingest_lag_ms_p95']}",
        ),
        ("inbound backlog max", lambda o: o["backlog_max"]),
        ("runner tick p50 / p95 (ms)", lambda o: f"{o['tick_ms_p50']} / {o['tick_ms_p95']}"),
        (
            "  p99 / max (ms), ticks > 250 ms",
            lambda o: f"{o['tick_ms_p99']} / {o['tick_ms_max']}, {o['ticks_over_250ms']}",
        ),
        (
            "runner tick CPU p50 / p95 (ms)",
            lambda o: f"{o.get('tick_cpu_ms_p50')} / {o.get('tick_cpu_ms_p95')}",
        ),
        ("ticks per second", lambda o: o["ticks_per_s"]),
        (
            "crash -> start p50/p95/max (ms)",
            lambda o: f"{o['crash_to_start_ms_p50']} / {o.get('crash_to_start_ms_p95')} / "
            f"{o['crash_to_start_ms_max']}",
        ),
        (
            "  crash -> define p50/max (ms)",
            lambda o: f"{o.get('crash_to_define_ms_p50')} / {o.get('crash_to_define_ms_max')}",
        ),
        (
            "crashes (no start / not running)",
            lambda o: f"{o['crashes']} ({o['crashes_without_start']} / {o['crashes_not_running']})",
        ),
        ("host lost -> fence sent (s)", lambda o: o["host_lost_to_fence_s"]),
        (
            "fence ok -> all starts (s)",
            lambda o: f"{o['fence_to_all_starts_s']} ({o['lost_guests']} guests)",
        ),
        (
            "fence ok -> defines first / last (s)",
            lambda o: f"{o['fence_to_first_define_s']} / {o['fence_to_last_define_s']}",
        ),
        ("fence ok -> first start (s)", lambda o: o["fence_to_first_start_s"]),
        (
            "  committed: defines / starts (s)",
            lambda o: f"{_span(o.get('fence_to_defines_committed_s'))} / "
            f"{_span(o.get('fence_to_starts_committed_s'))}",
        ),
        ("healthy hosts unreachable", lambda o: len(o["healthy_unreachable"])),
        ("healthy hosts fenced", lambda o: len(o["healthy_fenced"])),
        ("alarms raised", lambda o: len(o["alarms"])),
        (
            "console queue p95 / max",
            lambda o: f"{o['console_queue_p95']} / {o['console_queue_max']}",
        ),
        (
            "CPU worker-1 / worker-2 (%)",
            lambda o: f"{o['cpu_pct'].get('worker')} / {o['cpu_pct'].get('worker-2')}",
        ),
        (
            "CPU ingest / beat (%)",
            lambda o: f"{o['cpu_pct'].get('ingest')} / {o['cpu_pct'].get('beat')}",
        ),
        ("CPU web (%)", lambda o: o["cpu_pct"].get("web", "-")),
        (
            "RSS workers / ingest / beat (MiB)",
            lambda o: "{} / {} / {}".format(
                round(o["rss_mib"].get("worker", 0) + o["rss_mib"].get("worker-2", 0)),
                round(o["rss_mib"].get("ingest", 0)),
                round(o["rss_mib"].get("beat", 0)),
            ),
        ),
        ("RSS web (MiB)", lambda o: o["rss_mib"].get("web", "-")),
        ("load average 1 min (start / end)", lambda o: " / ".join(map(str, o["load_avg_1m"]))),
        (
            "simulated agents late p95 / max (ms)",
            lambda o: f"{o.get('fleet_late_ms_p95')} / {o.get('fleet_late_ms_max')}",
        ),
        ("  sent_at -> in Redis p95 (ms)", lambda o: o.get("fleet_push_ms_p95")),
        ("settle (s)", lambda o: o["settle_s"]),
    ]
    heads = [f"{o['hosts']} x {o['guests'] // o['hosts']}" for o in results]
    lines = [f"{'':34}" + "".join(f"{h:>22}" for h in heads)]
    for label, cell in rows:
        lines.append(f"{label:34}" + "".join(f"{cell(o)!s:>22}" for o in results))
    for o in results:
        if not o.get("pages"):
            continue
        lines.append("")
        lines.append(
            f"pages over HTTP, loaded in a loop at {o['hosts']} x {o['guests'] // o['hosts']}:"
        )
        lines.append(f"{'':34}{'loads':>8}{'p50 ms':>10}{'p95 ms':>10}  errors")
        for label, page in o["pages"].items():
            errors = ", ".join(sorted(set(page["errors"]))) or "-"
            lines.append(
                f"{label:34}{page['n']:>8}{page['p50_ms']!s:>10}{page['p95_ms']!s:>10}  "
                f"{len(page['errors'])} {errors}"
            )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="8x10,32x10,128x10,8x80,32x80,128x80")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--crash-every", type=float, default=3.0)
    p.add_argument("--json", action="store_true", help="one JSON object per size")
    p.add_argument(
        "--stall", type=float, default=0.0, help="freeze the drainer this long mid-run (s)"
    )
    p.add_argument(
        "--pages",
        action="store_true",
        help="also run the web process and load every page in a loop over HTTP",
    )
    p.add_argument(
        "--keep-logs",
        metavar="DIR",
        help="copy the console processes' logs into DIR/<size>/ (e.g. to read its slow ticks)",
    )
    p.add_argument("--one", help=argparse.SUPPRESS)  # HOSTSxGUESTS: run one size here
    args = p.parse_args()
    if args.one:
        n, m = (int(x) for x in args.one.split("x"))
        with tempfile.TemporaryDirectory(prefix="haven-fleet-") as root:
            try:
                result = run_one(
                    n, m, args.seconds, args.crash_every, Path(root), args.stall, args.pages
                )
            finally:
                if args.keep_logs:
                    kept = Path(args.keep_logs) / args.one
                    shutil.copytree(Path(root) / "logs", kept, dirs_exist_ok=True)
            print(json.dumps(result), flush=True)
        return 0
    results = []
    for size in args.sizes.split(","):
        argv = [sys.executable, __file__, "--one", size, "--seconds", str(args.seconds)]
        argv += ["--crash-every", str(args.crash_every), "--stall", str(args.stall)]
        argv += ["--pages"] if args.pages else []
        argv += ["--keep-logs", args.keep_logs] if args.keep_logs else []
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{size}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
            return 1
        result = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(result)
        print(json.dumps(result) if args.json else f"{size} done", flush=True)
    if not args.json:
        head = "simulated fleet, real console (2 workers, beat, drainer), SQLite"
        head += "; web (runserver) with every page loaded in a loop" if args.pages else ""
        print(f"{head}, {args.seconds:g} s measured per size")
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
