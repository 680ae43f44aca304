"""Time the console's pages and API lists at size — numbers, not a test.

    .venv/bin/python deploy/bench/pages.py [--hosts 128] [--services 10000] [--rounds 20]

Builds a cluster in a throw-away SQLite database (hosts, failover domains, services spread over
the hosts with engine reasons and a few in trouble, a few thousand events and jobs), then loads
each page and list as a logged-in viewer through Django's test client (the whole request:
middleware, auth, queries, templates) and prints p50/p95 in ms and the number of SQL queries per
request (target: p95 ≤ 300 ms at 10,000 guests, a query count that does not grow with them).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

setup_django = importlib.import_module("runtime").setup_django  # deploy/bench/runtime.py


def build(hosts: int, services: int) -> int:
    from django.contrib.auth.models import Group, User

    from console.clusters.models import Cluster, Host
    from console.events.models import Event
    from console.services.models import FailoverDomain, FailoverDomainMember, VmService

    cluster = Cluster.objects.create(name="big")
    rows = Host.objects.bulk_create(
        [
            Host(
                cluster=cluster,
                name=f"h{i:03d}",
                address=f"10.0.{i // 250}.{i % 250 + 1}",
                state="online",
                memory_total_mb=262144,
                memory_free_mb=131072,
                cpus=64,
            )
            for i in range(hosts)
        ]
    )
    domains = FailoverDomain.objects.bulk_create(
        [FailoverDomain(cluster=cluster, name=f"prefer-{h.name}", ordered=True) for h in rows]
    )
    FailoverDomainMember.objects.bulk_create(
        [
            FailoverDomainMember(domain=d, host=h, priority=1)
            for d, h in zip(domains, rows, strict=False)
        ]
    )
    xml = "<domain type='qemu'><name>x</name><memory unit='MiB'>1024</memory></domain>"
    batch = []
    for i in range(services):
        host = rows[i % hosts]
        trouble = i % 97 == 0
        batch.append(
            VmService(
                cluster=cluster,
                name=f"vm{i:05d}",
                domain_xml=xml,
                memory_mb=1024,
                failover_domain=domains[i % hosts],
                host=None if trouble else host,
                state="fence" if trouble else "started",
                state_reason=f"waiting for {host.name} to be fenced" if trouble else "",
            )
        )
    VmService.objects.bulk_create(batch, batch_size=2000)
    # 30 host failures of 80 guests each, as the engine writes them (typed state changes)
    events = []
    for k in range(30):
        failed, other = rows[k % hosts], rows[(k + 1) % hosts]

        def change(kind: str, name: str, old: str, new: str, **data: object) -> Event:
            return Event(
                actor="engine",
                verb=f"{kind}-state",
                object_type=kind,
                object_name=name,
                cluster=cluster,
                result="info",
                message=f"{old} -> {new}: r",
                data={"kind": kind, "old": old, "new": new, "reason": "r", **data},
            )

        events.append(change("host", failed.name, "online", "unreachable", host=failed.name))
        guests = [f"vm{(k * 80 + g) % services:05d}" for g in range(80)]
        events += [
            change("service", g, "started", "fence", host=failed.name, suspects=[failed.name])
            for g in guests
        ]
        events.append(change("host", failed.name, "fencing", "fenced", host=failed.name))
        events += [change("service", g, "fence", "recovering", host=other.name) for g in guests]
        events += [change("service", g, "starting", "started", host=other.name) for g in guests]
        events.append(change("host", failed.name, "fenced", "online", host=failed.name))
    Event.objects.bulk_create(events, batch_size=2000)
    user = User.objects.create_user("bench", password="bench-password")
    user.groups.add(Group.objects.get_or_create(name="viewer")[0])
    return cluster.pk


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hosts", type=int, default=128)
    p.add_argument("--services", type=int, default=10000)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="haven-bench-") as var_dir:
        setup_django(var_dir)
        from django.contrib.auth.models import User
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext

        started = time.perf_counter()
        cluster = build(args.hosts, args.services)
        print(
            f"built {args.hosts} hosts x {args.services} services "
            f"in {time.perf_counter() - started:.1f}s (SQLite)"
        )
        client = Client()
        client.force_login(User.objects.get(username="bench"))
        pages = {
            "home": "/",
            "cluster page": f"/clusters/{cluster}/",
            "live fragment": f"/clusters/{cluster}/live/",
            "service search (q=vm09)": f"/clusters/{cluster}/?q=vm09",
            "service filter (red)": f"/clusters/{cluster}/?state=red",
            "host page": f"/clusters/{cluster}/hosts/1/",
            "incidents": "/events/incidents/",
            "event log": "/events/",
            "GET /api/services/": "/api/services/?limit=50",
            "GET /api/hosts/": "/api/hosts/?limit=200",
        }
        print(f"{'request':28} {'p50 ms':>8} {'p95 ms':>8} {'queries':>8} {'KiB':>7}")
        for label, url in pages.items():
            client.get(url)  # warm
            times, queries, size = [], 0, 0
            for _ in range(args.rounds):
                with CaptureQueriesContext(connection) as ctx:
                    t0 = time.perf_counter()
                    response = client.get(url)
                    times.append((time.perf_counter() - t0) * 1000)
                assert response.status_code == 200, (url, response.status_code)
                queries, size = len(ctx.captured_queries), len(response.content)
            times.sort()
            p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
            print(
                f"{label:28} {statistics.median(times):8.1f} {p95:8.1f} {queries:8d} "
                f"{size / 1024:7.1f}"
            )


if __name__ == "__main__":
    main()
