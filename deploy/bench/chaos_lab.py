"""The chaos suite on the namespace lab (`deploy/chaos --lab`): real libvirtd, QEMU tick guests.

Root only, under `flock /tmp/haven-lab.lock` (deploy/chaos takes it). Builds the lab's three
hosts et-virt05..07 afresh under var/chaos-lab/, a Redis on the lab bridge (tests/lab/harness.py
`LabRedis`), the console's processes (harness `Console`, restarted 0.1 s after they exit as systemd
would), forms cluster `lab` through the console's SSH bootstrap and defines guest1..3 with their
IPMI fence devices (deploy/lab/article.py), exactly as tests/lab/test_e2e.py does, with fence
action `off`. Then N faults from the seed: host power loss (the lab pulls the plug; the console
fences it through fence_ipmilan; the runner powers it back), network cut (the veth down; the host
and its guests keep running until the fence powers it off), Redis kill -9 and restart, and worker
kill -9.

The watcher polls every host's libvirtd through its UNIX socket every 100 ms (the libvirtd-polling
watcher of tests/lab/test_e2e.py, which a cut cable does not blind) and turns what it sees into
the same records as the agents' trace: a guest seen running opens an interval, seen gone from a
reachable libvirtd closes it as reported at the last poll that saw it (hosts are polled one after
another, so a live migration's switch-over is never taken for two copies; a double run shorter
than one poll round can go unseen), and a power-off (by the runner, or by a fence: the
console's fence jobs) ends it. deploy/bench/chaos_watch.py then computes the same numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench import chaos
from bench import chaos_watch as watch

ROOT = chaos.ROOT
if str(ROOT / "deploy" / "lab") not in sys.path:
    sys.path.insert(0, str(ROOT / "deploy" / "lab"))  # haven_lab, article
KINDS: dict[str, float] = {"power-loss": 2, "network-cut": 2, "redis-restart": 1, "worker-kill": 1}
OVERRIDES = {"HAVEN_FENCE_ACTION": "off", "HAVEN_STOP_TIMEOUT_S": "3"}


class Poller:
    """Every 100 ms, what runs on each lab host (RUNNING only: a migration's paused destination
    is no second copy), written as trace records per host; None (unknown) when unreachable."""

    def __init__(self, running: Any, incarnation: dict[str, int]) -> None:
        """``running``: tests/lab/harness.py ``RunningGuests`` of the lab's hosts."""
        self.running, self.incarnation = running, incarnation
        uris: dict[str, str] = running.uris
        self.uris = uris
        self.traces: dict[str, list[dict[str, Any]]] = {h: [] for h in uris}
        self.seen: dict[str, set[str]] = {h: set() for h in uris}
        self.last_seen: dict[str, dict[str, float]] = {h: {} for h in uris}
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lab-poller", daemon=True)
        self.lock = threading.Lock()

    def _list(self, host: str) -> set[str] | None:
        found: set[str] | None = self.running.of(host)
        return found

    def _loop(self) -> None:
        while not self._stop.is_set():
            for host in self.uris:
                now = self._list(host)
                self._record(host, now, time.time())
            self.polls += 1
            self._stop.wait(0.1)

    def _record(self, host: str, now: set[str] | None, t: float) -> None:
        if now is None:
            return
        with self.lock:
            pid, last = self.incarnation[host], self.last_seen[host]
            for guest in sorted(now - self.seen[host]):
                self.traces[host].append({"t": t, "pid": pid, "event": "start", "guest": guest})
            # gone: it ran until the last poll that saw it (hosts are polled one after another,
            # so a live migration's switch-over never looks like two copies)
            for guest in sorted(self.seen[host] - now):
                record = {"t": last.pop(guest, t), "pid": pid, "event": "destroy", "guest": guest}
                self.traces[host].append(record)
            for guest in now:
                last[guest] = t
            self.seen[host] = now

    def forget(self, host: str) -> None:
        """The host lost power: what it ran is gone with it (the power log says when)."""
        with self.lock:
            self.seen[host], self.last_seen[host] = set(), {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class LabRun(chaos.Runner):
    kinds = KINDS
    pause_s = (1, 3)
    columns = (14, 10)

    def __init__(self, root: Path, seed: int, faults: int, quiet: bool) -> None:
        import haven_lab

        from tests.lab import harness

        super().__init__(quiet)
        self.harness, self.haven_lab = harness, haven_lab
        self.root, self.seed, self.n_faults = root, seed, faults
        self.rng = random.Random(seed)
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.power = chaos.Log(root / "power.jsonl")
        self.started_at = time.time()
        self.lab = haven_lab.Lab(root / "lab")
        self.redis = harness.LabRedis(root / "lab")
        self.incarnation = dict.fromkeys(harness.HOSTS, 1)
        self.api: Any = None
        self.poller: Poller | None = None
        self.cluster = "lab"

    @property
    def guests(self) -> tuple[str, ...]:
        import article

        return tuple(article.GUESTS)

    def env(self) -> dict[str, str]:
        return {**super().env(), "HAVEN_AGENT_BROKER_URL": self.redis.agent_url, **OVERRIDES}

    def setup(self) -> None:
        import os

        reason = self.haven_lab.namespace_support()
        if reason is not None:
            raise SystemExit(f"deploy/chaos --lab: lab hosts need network namespaces: {reason}")
        self.lab.destroy()
        self.lab.create(self.harness.HOSTS)
        self.harness.reset_agent_logs()
        self.redis.start()
        os.environ.update(self.env())
        import django

        django.setup()
        import article
        from django.conf import settings
        from django.core.management import call_command

        settings.HAVEN_WHEELHOUSE = ROOT / "var" / "wheelhouse"  # built by deploy/setup

        kernel = article.build_guest_kernel(self.lab.root)

        call_command("migrate", verbosity=0)
        from django.contrib.auth.models import User
        from rest_framework.test import APIClient

        admin = User.objects.create_superuser("chaos-admin", password=uuid.uuid4().hex)
        self.api = APIClient()
        self.api.force_authenticate(admin)
        self.console = chaos.make_console(self)
        self.console.start()
        self.spawn(self.supervise_console, "console")
        job = article.form_cluster(self.lab, actor="chaos")
        if job.status != "succeeded":
            raise RuntimeError(f"bootstrap failed: {job.explanation}")
        for name in self.harness.HOSTS:
            self.power(name, "boot", pid=self.incarnation[name])
        article.define_fencing_and_guests(self.api, self.lab, kernel)
        uris = {h.name: self.harness.unix_uri(h) for h in self.lab.hosts()}
        self.poller = Poller(self.harness.RunningGuests(uris), self.incarnation)
        self.poller.start()
        self.say(f"lab cluster formed; run in {self.root}; waiting for guest1..3")
        chaos.wait_for("every guest running once", self.converged_now, 180, 0.5)
        self.spawn(self.poll_ticks, "ticks")
        self.say("converged: faults begin")

    # the truth so far ----------------------------------------------------------------
    def fence_records(self) -> list[dict[str, Any]]:
        """The console's fence jobs as power records: begun, done, and the host off when done
        (fence action off through the host's BMC)."""
        from console.jobs.models import Job

        out: list[dict[str, Any]] = []
        boots = [r for r in watch.read_jsonl(self.root / "power.jsonl") if r["event"] == "boot"]
        for job in Job.objects.filter(kind="fence").order_by("pk"):
            host = str(job.params.get("host", ""))
            out.append(
                {"t": job.created.timestamp(), "host": host, "event": "fence-begin", "by": "job"}
            )
            if job.status == "succeeded" and job.finished is not None:
                t = job.finished.timestamp()
                before = [b["pid"] for b in boots if b["host"] == host and b["t"] <= t]
                pid = before[-1] if before else 1
                out.append({"t": t, "host": host, "event": "fence-done", "result": 0, "by": "job"})
                out.append({"t": t, "host": host, "event": "off", "pid": pid, "by": "job"})
        return out

    def power_records(self) -> list[dict[str, Any]]:
        return watch.read_jsonl(self.root / "power.jsonl") + self.fence_records()

    def traces(self) -> dict[str, list[dict[str, Any]]]:
        assert self.poller is not None
        with self.poller.lock:
            return {h: list(t) for h, t in self.poller.traces.items()}

    def running(self) -> dict[str, list[str]]:
        ivs = watch.intervals(self.traces(), self.power_records(), self.guests)
        return watch.running_at(ivs, time.time())

    def converged_now(self) -> bool:
        running = self.running()
        return all(len(running.get(g, [])) == 1 for g in self.enabled())

    def enabled(self) -> list[str]:
        return chaos.enabled_guests(self.guests)

    @property
    def guests_all(self) -> tuple[str, ...]:
        return self.guests

    def _fenced_since(self, host: str, since: float) -> bool:
        from console.jobs.models import Job

        return Job.objects.filter(
            kind="fence", params__host=host, status="succeeded", created__gte=_dt(since)
        ).exists()

    # faults ----------------------------------------------------------------------------
    def fault_errors(self) -> tuple[type[Exception], ...]:
        return (*super().fault_errors(), self.haven_lab.LabError)

    def _host_with_guests(self, fault: Fault) -> str | None:
        running = self.running()
        hosts = sorted({hs[0] for hs in running.values() if len(hs) == 1})
        if not hosts:
            fault.note = "skipped: no host runs a guest"
            return None
        fault.target = self.rng.choice(hosts)
        return fault.target

    def _boot(self, name: str) -> None:
        assert self.poller is not None
        self.lab.power_on(name)
        with self.poller.lock:
            self.incarnation[name] += 1
            self.power(name, "boot", pid=self.incarnation[name])

    def _off(self, name: str, fault: Fault) -> str:
        try:
            chaos.wait_for(f"{name} fenced", lambda: self._fenced_since(name, fault.start), 45, 0.5)
            return "fenced"
        except TimeoutError:
            return "not fenced in 45 s"

    def _host_fault(self, fault: Fault, cut: bool) -> None:
        """Power a host running guests off (or cut its network), wait for its fence, then
        bring it back (boot it; after a cut, restore the network and boot it if it was
        fenced)."""
        name = self._host_with_guests(fault)
        if name is None:
            return
        assert self.poller is not None
        (self.lab.net_cut if cut else self.lab.power_off)(name)
        self.power(name, "cut" if cut else "off", pid=self.incarnation[name])
        if not cut:
            self.poller.forget(name)
        fault.note = self._off(name, fault)
        if cut:
            self.lab.net_restore(name)
            self.power(name, "restore", pid=self.incarnation[name])
            if self.lab.host(name).powered_on():
                return
            self.poller.forget(name)
        self._stop.wait(self.rng.uniform(1, 4))
        self._boot(name)

    def fault_power_loss(self, fault: Fault) -> None:
        self._host_fault(fault, cut=False)

    def fault_network_cut(self, fault: Fault) -> None:
        self._host_fault(fault, cut=True)

    def fault_redis_restart(self, fault: Fault) -> None:
        fault.target = "redis"
        self.redis.restart()  # kill -9, and start again on its append-only file

    def fault_worker_kill(self, fault: Fault) -> None:
        fault.target = "worker"
        self.kill_console("worker")

    # the end ---------------------------------------------------------------------------
    def settle(self, limit: float = 60.0, stable: float = 5.0, poll: float = 0.5) -> float:
        return super().settle(limit, stable, poll)

    def report(self, last_fault: float, end: float) -> tuple[watch.Report, list[str]]:
        (self.root / "trace").mkdir(exist_ok=True)
        for host, records in self.traces().items():  # kept for a second look
            lines = "".join(json.dumps(r) + "\n" for r in records)
            (self.root / "trace" / f"{host}.jsonl").write_text(lines)
        logs = {p.name: p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log"))}
        for p in sorted(Path("/var/log").glob("haven-agent-*.log")):
            logs[p.name] = p.read_text(errors="replace")
        return self.analyse(last_fault, end, logs, self.guests, self.harness.HOSTS)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        if self.poller is not None:
            self.poller.stop()
        if self.console is not None:
            self.console.stop()
        with contextlib.suppress(Exception):
            self.lab.destroy()
        self.redis.stop()


Fault = chaos.Fault


def _dt(t: float) -> Any:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, tz=dt.UTC)


def main(args: argparse.Namespace) -> int:
    root = (args.root or ROOT / "var" / "chaos-lab" / f"seed-{args.seed}").resolve()
    return chaos.execute(lambda r: LabRun(r, args.seed, args.faults, args.quiet), root, KINDS)
