"""Time the console runtime on a real Redis and a real (SQLite) database — not a test.

    .venv/bin/python deploy/bench/runtime.py [--hosts 32] [--services 320] [--rounds 20]

It builds a cluster in a throw-away database, lets every host heartbeat, settles the services,
then measures, the way the ingest drainer does it (``ingest.handle`` then the runner, in-process):

- crash → start dispatched: a ``crashed`` lifecycle event arrives until the restart's first
  command is handed to the broker (target ≤ 200 ms on this machine);
- heartbeat ingestion: the cost of one heartbeat (it goes to Redis, not the database);
- one runner tick in steady state, with every host heartbeating.

Agents are simulated here (a transport that records what would be sent); the broker hop to a
real agent adds ~3-5 ms (see deploy/bench/agent.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def setup_django(var_dir: str) -> None:
    os.environ["HAVEN_VAR_DIR"] = var_dir
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    os.environ["HAVEN_LOG_LEVEL"] = "WARNING"
    os.environ["HAVEN_WAKE_ON_COMMAND"] = "0"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


class TimedTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[float, str, dict[str, Any]]] = []

    def send(self, host: str, command: dict[str, Any], redacted: dict[str, Any]) -> None:
        self.sent.append((time.perf_counter(), host, command))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hosts", type=int, default=32)
    p.add_argument("--services", type=int, default=320)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="haven-bench-") as var_dir:
        setup_django(var_dir)
        run(args.hosts, args.services, args.rounds)


def run(n_hosts: int, n_services: int, rounds: int) -> None:
    import redis
    from django.conf import settings

    from console.clusters.models import Cluster, FenceDevice, Host
    from console.jobs.transport import use_transport
    from console.runtime import ingest, runner
    from console.runtime.store import RedisStore
    from console.services.models import VmService

    r = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    prefix = f"haven-bench-{os.getpid()}:"
    store = RedisStore(r, prefix=prefix)

    def receive(message: dict[str, Any]) -> None:
        """What the drainer does with one message from the host named by its inbound list."""
        cluster_id = ingest.handle(message, store, sender=message["host"])
        if cluster_id is not None:
            runner.run(cluster_id, store)

    cluster = Cluster.objects.create(name="bench")
    hosts = [
        Host.objects.create(cluster=cluster, name=f"h{i:03d}", address=f"10.0.0.{i + 1}")
        for i in range(n_hosts)
    ]
    for h in hosts:
        FenceDevice.objects.create(cluster=cluster, name=f"f-{h.name}", agent="fence_dummy", host=h)
    # Every service already runs on its host (as in a console that ran before): the engine
    # adopts what the heartbeats report, instead of a settle of n_services starts.
    running: dict[str, set[str]] = {h.name: set() for h in hosts}
    rows = []
    for i in range(n_services):
        name, host = f"g{i:05d}", hosts[i % n_hosts]
        running[host.name].add(name)
        xml = f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory></domain>"
        rows.append(
            VmService(cluster=cluster, name=name, domain_xml=xml, memory_mb=64, host=host,
                      state="started", desired_state="started")
        )  # fmt: skip
    VmService.objects.bulk_create(rows, batch_size=2000)

    def heartbeat_all() -> None:
        for h, guests in running.items():
            ingest.handle(
                {
                    "v": 2,
                    "kind": "heartbeat",
                    "host": h,
                    "memory_total_mib": 65536,
                    "memory_free_mib": 60000,
                    "cpus": 64,  # 80 guests a host fit under the default vCPU overcommit (4)
                    "guests": [{"name": g, "uuid": "", "state": "running"} for g in sorted(guests)],
                },
                store,
                sender=h,
            )

    def answer(transport: TimedTransport, start: int) -> None:
        for _, host, command in transport.sent[start:]:
            if command["kind"] == "start":
                running[host].add(command["args"]["guest"])
            receive(
                {
                    "v": 2,
                    "kind": "result",
                    "host": host,
                    "id": command["id"],
                    "ok": True,
                    "data": {},
                    "error": None,
                }
            )

    transport = TimedTransport()
    try:
        with use_transport(transport):
            for _ in range(3):  # settle: every service adopted
                heartbeat_all()
                seen = len(transport.sent)
                runner.run(cluster.pk, store)
                answer(transport, seen)
                answer(transport, seen)  # define results release the starts
            started = VmService.objects.filter(state="started").count()
            hb = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                heartbeat_all()
                hb.append((time.perf_counter() - t0) / n_hosts)
            ticks = []
            for _ in range(rounds):
                heartbeat_all()
                ticks.append(runner.run(cluster.pk, store)[0].duration_s)
            crash = []
            for i in range(rounds):
                service = VmService.objects.select_related("host").get(name=f"g{i:05d}")
                assert service.host is not None
                host_name = service.host.name
                running[host_name].discard(service.name)
                seen = len(transport.sent)
                t0 = time.perf_counter()
                receive(
                    {
                        "v": 2,
                        "kind": "event",
                        "event": "lifecycle",
                        "host": host_name,
                        "guest": service.name,
                        "state": "crashed",
                        "detail": "failed",
                    }
                )
                first = [
                    t
                    for t, _, c in transport.sent[seen:]
                    if c["kind"] == "define" and service.name in c["args"]["xml"]
                ]
                if not first:  # e.g. the tick was rolled back (LOCK_MAX_HOLD_S): say so
                    raise SystemExit(f"crash of {service.name}: no restart dispatched")
                crash.append(first[0] - t0)
                answer(transport, seen)
                answer(transport, len(transport.sent) - 1)
                heartbeat_all()
    finally:
        for key in r.scan_iter(f"{prefix}*"):
            r.delete(key)

    def row(name: str, values: list[float], unit: float = 1000.0) -> None:
        ms = sorted(v * unit for v in values)
        print(f"{name:<34} {statistics.median(ms):9.2f} {ms[0]:9.2f} {ms[-1]:9.2f}")

    print(
        f"{n_hosts} hosts, {n_services} services ({started} started), {rounds} rounds, "
        f"SQLite, Redis at {settings.REDIS_URL}"
    )
    print(f"{'':<34} {'median':>9} {'min':>9} {'max':>9}   (ms)")
    row("crash event -> start dispatched", crash)
    row("one heartbeat ingested", hb)
    row("runner tick, steady state", ticks)


if __name__ == "__main__":
    main()
