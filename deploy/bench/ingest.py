"""Time the ingest drainer on a real Redis and a real (SQLite) database — not a test.

    .venv/bin/python deploy/bench/ingest.py [--hosts 128] [--seconds 20] [--burst 20000]

Simulated hosts (this process, one thread) RPUSH real protocol-v2 heartbeats onto their own
inbound lists; the real drainer (console/ha/drain.py) runs in a thread of this process,
with the runner's wake replaced by a stopwatch (the runner's own cost is deploy/bench/runtime.py's).
It prints:

- burst: N heartbeats queued at once, then drained: heartbeats/s and drainer CPU per heartbeat;
- sustained: every host at 1 Hz (spread over the second) for S seconds: ingest lag (console
  receive - agent sent_at of each heartbeat, as the store records it) p50/p95/max, the largest
  backlog seen, the drainer's CPU (its thread's) and its rounds a second;
- crash event -> runner woken: a `crashed` lifecycle event pushed while the hosts heartbeat,
  until the drainer calls the cluster's runner (p50/max over 20).
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

bench = importlib.import_module("runtime")  # deploy/bench/runtime.py


def heartbeat(host: str, seq: int, boot: str) -> str:
    t = time.time()
    return json.dumps(
        {
            "v": 2,
            "kind": "heartbeat",
            "host": host,
            "agent_version": "bench",
            "boot": boot,
            "seq": seq,
            "interval_s": 1.0,
            "libvirt_connected": True,
            "host_uuid": f"uuid-{host}",
            "cpus": 16,
            "memory_total_mib": 65536,
            "memory_free_mib": 60000,
            "guests": [{"name": f"{host}-g{i}", "uuid": "", "state": "running"} for i in range(10)],
            "ts": t,
            "sent_at": t,
        }
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    bench.bench_main(__doc__, run, hosts=128, seconds=20, burst=20_000)


def run(n_hosts: int, seconds: int, burst: int) -> None:
    import redis
    from django.conf import settings

    from agent.protocol import inbound_key
    from console.clusters.models import Cluster, Host
    from console.ha.drain import Drainer
    from console.ha.store import RedisStore

    r = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    prefix = f"haven-bench-{os.getpid()}:"
    store = RedisStore(r, prefix=prefix)
    cluster = Cluster.objects.create(name="bench")
    names = [f"b{uuid.uuid4().hex[:6]}-{i:03d}" for i in range(n_hosts)]
    Host.objects.bulk_create(
        Host(cluster=cluster, name=n, address=f"10.0.{i // 250}.{i % 250 + 1}")
        for i, n in enumerate(names)
    )
    woken: list[float] = []
    drainer = Drainer(
        store,
        send_wake=lambda cid: woken.append(time.perf_counter()),
        run_cluster=lambda cid, s: None,  # no runner here: its backup ticks are not timed
    )
    drainer._keep_users = False  # no agent users in this throw-away database
    boot = uuid.uuid4().hex[:8]
    keys = [inbound_key(n) for n in names]
    try:
        # --- burst ---------------------------------------------------------------------------
        pipe = r.pipeline(transaction=False)
        for i in range(burst):
            pipe.rpush(keys[i % n_hosts], heartbeat(names[i % n_hosts], i // n_hosts + 1, boot))
        pipe.execute()
        drainer.keys()  # the directory and the SCAN, outside the timing
        cpu0, t0 = time.process_time(), time.perf_counter()
        drained = 0
        while drained < burst:
            drained += drainer.round(wait_s=0)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        print(f"{n_hosts} hosts, Redis at {settings.REDIS_URL}, SQLite")
        print(
            f"burst of {burst} heartbeats drained in {wall:.2f} s: "
            f"{burst / wall:,.0f} heartbeats/s, {cpu / burst * 1e6:.0f} us CPU per heartbeat"
        )

        # --- sustained 1 Hz, with crash events -------------------------------------------------
        stop = threading.Event()
        lags: list[float] = []
        backlog = [0]

        def publish() -> None:
            """Every host once a second, spread over the second as real agents are."""
            seq = 10_000
            nxt, slot = time.monotonic(), 1.0 / n_hosts
            while not stop.is_set():
                seq += 1
                for key, name in zip(keys, names, strict=True):
                    r.rpush(key, heartbeat(name, seq, boot))
                    nxt += slot
                    stop.wait(max(0.0, nxt - time.monotonic()))

        def sample() -> None:
            seen: dict[str, float] = {}
            while not stop.is_set():
                records: Any = r.hgetall(f"{prefix}hb")
                for name, raw in records.items():
                    data = json.loads(raw)
                    sent = float(data["hb"]["sent_at"])
                    if seen.get(name) != sent:
                        seen[name] = sent
                        lags.append(float(data["received"]) - sent)
                backlog[0] = max(backlog[0], store.ingest_status().backlog)
                stop.wait(0.05)

        def crash_latency(count: int, pause_s: float) -> list[float]:
            out: list[float] = []
            for i in range(count):
                time.sleep(pause_s)
                before = len(woken)
                host = names[i % n_hosts]
                event = {
                    "v": 2,
                    "kind": "event",
                    "event": "lifecycle",
                    "host": host,
                    "guest": f"{host}-g0",
                    "uuid": "",
                    "state": "crashed",
                    "detail": "failed",
                    "seq": i,
                    "ts": time.time(),
                    "sent_at": time.time(),
                }
                t_sent = time.perf_counter()
                r.rpush(inbound_key(host), json.dumps(event))
                deadline = time.perf_counter() + 2
                while len(woken) == before and time.perf_counter() < deadline:
                    time.sleep(0.0002)
                if len(woken) > before:
                    out.append(woken[before] - t_sent)
            return out

        runner = threading.Thread(target=lambda: drainer.run(stop), daemon=True)
        runner.start()
        idle_lat = crash_latency(20, 0.2)
        threads = [threading.Thread(target=f, daemon=True) for f in (publish, sample)]
        for t in threads:
            t.start()
        time.sleep(2)
        lags.clear()
        clock = time.pthread_getcpuclockid(runner.ident or 0)  # the drainer thread's CPU
        cpu0, rounds0, t0 = time.clock_gettime(clock), drainer.totals.rounds, time.monotonic()
        end = t0 + seconds
        crash_lat = crash_latency(20, 0.37)
        while time.monotonic() < end:
            time.sleep(0.1)
        window = time.monotonic() - t0
        drain_cpu = (time.clock_gettime(clock) - cpu0) / window
        rounds = (drainer.totals.rounds - rounds0) / window
        stop.set()
        runner.join(3)
        for t in threads:
            t.join(3)
        ms = [v * 1000 for v in lags]
        print(
            f"sustained {n_hosts} heartbeats/s for {seconds} s: ingest lag p50 "
            f"{statistics.median(ms):.1f} ms, p95 {pct(ms, 0.95):.1f} ms, max {max(ms):.1f} ms "
            f"({len(ms)} heartbeats), largest backlog {backlog[0]}; drainer CPU "
            f"{100 * drain_cpu:.1f} % of a core, {rounds:.0f} rounds/s"
        )
        for what, values in (("idle", idle_lat), (f"under {n_hosts} heartbeats/s", crash_lat)):
            c = [v * 1000 for v in values]
            print(
                f"crash event -> runner woken, {what}: p50 {statistics.median(c):.2f} ms, "
                f"max {max(c):.2f} ms ({len(c)} events)"
            )
    finally:
        drainer.close(wait=False)
        for key in [*keys, *r.scan_iter(f"{prefix}*")]:
            r.delete(key)


if __name__ == "__main__":
    main()
