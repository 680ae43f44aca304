"""Time the console's pages and API lists at size — numbers, not a test.

    .venv/bin/python deploy/bench/pages.py [--hosts 128] [--services 10000] [--rounds 20]

Builds a cluster in a throw-away SQLite database (hosts, failover domains, services spread over
the hosts with engine reasons and a few in trouble, a few thousand events and jobs), then loads
each page and list as a logged-in viewer through Django's test client (the whole request:
middleware, auth, queries, templates) and prints p50/p95 in ms (wall), the CPU time p50 (what a
loaded machine does not distort), the number of SQL queries per request (every round's count; a
range if it varied; tests/console/test_query_counts.py pins them) and the load average before and
after (target: p95 ≤ 300 ms at 10,000 guests, a query count that does not grow with them). Last,
the policy panel's cost, paid by the beat's worker once per engine tick instead of by the page.
"""

from __future__ import annotations

import importlib
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def build(hosts: int, services: int, failures: int = 30, guests_per_failure: int = 80) -> int:
    """Cluster "big" with ``hosts`` more hosts and ``services`` more services (called again,
    it grows: tests/console/test_query_counts.py counts the queries at two sizes) and the
    events of ``failures`` host failures of ``guests_per_failure`` guests each."""
    from django.contrib.auth.models import Group, User

    from console.clusters.models import Cluster, Host
    from console.events.models import Event
    from console.services.models import FailoverDomain, FailoverDomainMember, VmService

    cluster, _ = Cluster.objects.get_or_create(name="big")
    h0 = Host.objects.filter(cluster=cluster).count()
    s0 = VmService.objects.filter(cluster=cluster).count()
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
            for i in range(h0, h0 + hosts)
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
    for i in range(s0, s0 + services):
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
    # host failures of 80 guests each, as the engine writes them (typed state changes)
    events = []
    for k in range(failures):
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
        guests = [
            f"vm{s0 + (k * guests_per_failure + g) % services:05d}"
            for g in range(guests_per_failure)
        ]
        events += [
            change("service", g, "started", "fence", host=failed.name, suspects=[failed.name])
            for g in guests
        ]
        events.append(change("host", failed.name, "fencing", "fenced", host=failed.name))
        events += [change("service", g, "fence", "recovering", host=other.name) for g in guests]
        events += [change("service", g, "starting", "started", host=other.name) for g in guests]
        events.append(change("host", failed.name, "fenced", "online", host=failed.name))
    Event.objects.bulk_create(events, batch_size=2000)
    if not User.objects.filter(username="bench").exists():
        user = User.objects.create_user("bench", password="bench-password")
        user.groups.add(Group.objects.get_or_create(name="viewer")[0])
    return cluster.pk


def pages(cluster: int) -> dict[str, str]:
    """Every page and API list the bench times (and the query-count test counts)."""
    from console.clusters.models import Host
    from console.services.models import VmService

    host = Host.objects.filter(cluster_id=cluster).order_by("pk").values_list("pk", flat=True)[0]
    service = (
        VmService.objects.filter(cluster_id=cluster).order_by("pk").values_list("pk", flat=True)[0]
    )
    return {
        "home": "/",
        "cluster page": f"/clusters/{cluster}/",
        "live fragment": f"/clusters/{cluster}/live/",
        "service search (q=vm09)": f"/clusters/{cluster}/?q=vm09",
        "service search (q=vm000)": f"/clusters/{cluster}/?q=vm000",
        "service filter (red)": f"/clusters/{cluster}/?state=red",
        "host page": f"/clusters/{cluster}/hosts/{host}/",
        "host storage tab": f"/clusters/{cluster}/hosts/{host}/storage/",
        "failover domains": f"/clusters/{cluster}/domains/",
        "fence devices": f"/clusters/{cluster}/fence/",
        "migrate page": f"/clusters/{cluster}/services/{service}/migrate/",
        "incidents": "/events/incidents/",
        "event log": "/events/",
        "jobs": "/jobs/",
        "GET /api/services/": "/api/services/?limit=50",
        "GET /api/hosts/": "/api/hosts/?limit=200",
        "GET /api/clusters/": "/api/clusters/",
        "GET /api/failover-domains/": "/api/failover-domains/?limit=200",
        "GET /api/jobs/": "/api/jobs/?limit=50",
        "GET /api/events/": "/api/events/?limit=50",
        "GET /api/…/policy/": f"/api/clusters/{cluster}/policy/",
    }


def main() -> None:
    bench = importlib.import_module("runtime")  # deploy/bench/runtime.py
    bench.bench_main(__doc__, run, hosts=128, services=10000, rounds=20)


def run(hosts: int, services: int, rounds: int) -> None:
    """Build the cluster, then time every page ``rounds`` times (after a warm-up)."""
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    started = time.perf_counter()
    cluster = build(hosts, services)
    print(
        f"built {hosts} hosts x {services} services "
        f"in {time.perf_counter() - started:.1f}s (SQLite)"
    )
    client = Client()
    client.force_login(User.objects.get(username="bench"))
    print(f"load average {_load()}")
    print(f"{'request':28} {'p50 ms':>8} {'p95 ms':>8} {'cpu p50':>8} {'queries':>8} {'KiB':>7}")
    for label, url in pages(cluster).items():
        client.get(url)  # warm (the policy panel is computed and kept here)
        times, cpu, counts, size = [], [], set(), 0
        for _ in range(rounds):
            with CaptureQueriesContext(connection) as ctx:
                t0, c0 = time.perf_counter(), time.process_time()
                response = client.get(url)
                times.append((time.perf_counter() - t0) * 1000)
                cpu.append((time.process_time() - c0) * 1000)
            assert response.status_code == 200, (url, response.status_code)
            counts.add(len(ctx.captured_queries))
            size = len(response.content)
        # the query count of every round (a range if it varied)
        queries = "-".join(str(n) for n in sorted({min(counts), max(counts)}))
        print(
            f"{label:28} {statistics.median(times):8.1f} {_p95(times):8.1f} "
            f"{statistics.median(cpu):8.1f} {queries:>8} {size / 1024:7.1f}"
        )
    _panel_refresh(cluster, rounds)
    print(f"load average {_load()}")


def _p95(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.95))]


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _panel_refresh(cluster_id: int, rounds: int) -> None:
    """What the cluster page no longer pays per request: the policy panel computed by the
    beat's worker once per engine tick while the page is watched (console/ha/panel.py)."""
    from console.clusters.models import Cluster
    from console.ha import panel

    cluster = Cluster.objects.select_related("engine").get(pk=cluster_id)
    times, cpu = [], []
    for _ in range(max(3, rounds // 4)):
        t0, c0 = time.perf_counter(), time.process_time()
        panel.compute(cluster)
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    print(
        f"{'policy panel (worker/tick)':28} {statistics.median(times):8.1f} "
        f"{_p95(times):8.1f} {statistics.median(cpu):8.1f}   once per engine tick while watched"
    )


if __name__ == "__main__":
    main()
