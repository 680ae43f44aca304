"""Time the console runtime on a real Redis and a real (SQLite) database — not a test.

    .venv/bin/python deploy/bench/runtime.py [--hosts 32] [--services 320] [--rounds 20]

It builds a cluster in a throw-away database, lets every host heartbeat, settles the services,
then measures, the way the ingest drainer does it (``ingest.handle`` then the runner, in-process):

- crash → start dispatched: a ``crashed`` lifecycle event arrives until the restart's first
  command is handed to the broker (target ≤ 200 ms on this machine);
- heartbeat ingestion: the cost of one heartbeat (it goes to Redis, not the database);
- one runner tick in steady state, with every host heartbeating;
- a host lost: silent until the runner fences it, then (the fence answered at once) the fence
  result -> every one of its guests' starts dispatched, in wall and CPU time, and the CPU of
  each stage: the fence result's tick, the defines' results, the starts'.
  ``HAVEN_BENCH_PROFILE=FILE`` writes that stretch's cProfile to FILE (``python -m pstats``).

Agents are simulated here (console/ha/fakes.py, the fleet the tests run on); the broker
hop to a real agent adds ~3-5 ms (see deploy/bench/agent.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def setup_django(var_dir: str) -> None:
    """Django on a throw-away database in ``var_dir``, migrated; quiet; people's commands do
    not wake the runner (each bench drives it). Shared by the benches (ingest.py, pages.py)."""
    os.environ["HAVEN_VAR_DIR"] = var_dir
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    os.environ["HAVEN_LOG_LEVEL"] = "WARNING"
    os.environ["HAVEN_WAKE_ON_COMMAND"] = "0"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def bench_main(doc: str, run: Callable[..., None], **options: int) -> None:
    """A bench's command line: ``--NAME N`` for each option (``options``: name -> default),
    then ``run`` with their values, in order, on Django with a throw-away database."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    for name, default in options.items():
        p.add_argument(f"--{name}", type=int, default=default)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="haven-bench-") as var_dir:
        setup_django(var_dir)
        run(*(getattr(args, name) for name in options))


def main() -> None:
    bench_main(__doc__, run, hosts=32, services=320, rounds=20)


def run(n_hosts: int, n_services: int, rounds: int) -> None:
    import redis
    from django.conf import settings

    from console.clusters.models import Cluster, FenceDevice, Host
    from console.ha import runner
    from console.ha.fakes import FakeAgents
    from console.ha.store import RedisStore
    from console.jobs.transport import use_transport
    from console.services.models import VmService

    class TimedAgents(FakeAgents):
        """The simulated fleet, noting when each command was handed to the broker."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.times: list[float] = []

        def send(self, host: str, command: dict[str, Any], redacted: dict[str, Any]) -> None:
            self.times.append(time.perf_counter())
            super().send(host, command, redacted)

    r = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    prefix = f"haven-bench-{os.getpid()}:"
    store = RedisStore(r, prefix=prefix)

    cluster = Cluster.objects.create(name="bench")
    hosts = [
        Host.objects.create(cluster=cluster, name=f"h{i:03d}", address=f"10.0.0.{i + 1}")
        for i in range(n_hosts)
    ]
    for h in hosts:
        FenceDevice.objects.create(cluster=cluster, name=f"f-{h.name}", agent="fence_dummy", host=h)
    # what the drainer does: each message filed, a woken cluster's runner run at once;
    # 64 CPUs a host: 80 guests a host fit under the default vCPU overcommit (4)
    agents = TimedAgents(
        store, [h.name for h in hosts], memory_total_mib=65536, cpus=64, wake_runner=True
    )
    # Every service already runs on its host (as in a console that ran before): the engine
    # adopts what the heartbeats report, instead of a settle of n_services starts.
    rows = []
    for i in range(n_services):
        name, host = f"g{i:05d}", hosts[i % n_hosts]
        agents.running[host.name].add(name)
        agents.memory[name] = 64
        xml = f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory></domain>"
        rows.append(
            VmService(cluster=cluster, name=name, domain_xml=xml, memory_mb=64, host=host,
                      state="started", desired_state="started")
        )  # fmt: skip
    VmService.objects.bulk_create(rows, batch_size=2000)
    try:
        with use_transport(agents):
            for _ in range(3):  # settle: every service adopted
                agents.heartbeat()
                runner.run(cluster.pk, store)
                agents.answer()  # define results release the starts, answered too
            started = VmService.objects.filter(state="started").count()
            hb = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                agents.heartbeat()
                hb.append((time.perf_counter() - t0) / n_hosts)
            ticks = []
            for _ in range(rounds):
                agents.heartbeat()
                ticks.append(runner.run(cluster.pk, store)[0].duration_s)
            crash = []
            for i in range(rounds):
                service = VmService.objects.select_related("host").get(name=f"g{i:05d}")
                assert service.host is not None
                seen = len(agents.commands)
                t0 = time.perf_counter()
                agents.crash(service.host.name, service.name)
                first = [
                    at
                    for at, (_, c) in zip(agents.times[seen:], agents.commands[seen:], strict=True)
                    if c["kind"] == "define" and service.name in c["args"]["xml"]
                ]
                if not first:  # e.g. the tick was rolled back (LOCK_MAX_HOLD_S): say so
                    raise SystemExit(f"crash of {service.name}: no restart dispatched")
                crash.append(first[0] - t0)
                agents.answer()
                agents.heartbeat()
            failover = _failover(agents, cluster.pk, store, hosts[-1].name)
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
    print(f"host lost: {failover['guests']} guests; fence sent {failover['fence_sent_s']:.2f} s")
    stages = {
        "fence_result": "fence result -> defines sent",
        "defines": "define results -> starts sent",
        "all": "fence ok -> all starts sent",
        "starts": "start results",
    }
    for key, label in stages.items():
        print(
            f"  {label:<32} {failover[key + '_wall'] * 1000:9.1f} ms wall"
            f" {failover[key + '_cpu'] * 1000:9.1f} ms CPU"
        )


def _failover(agents: Any, cluster_id: int, store: Any, victim: str) -> dict[str, float]:
    """A host lost: the others beat, the runner ticks, until it sends the fence. Then, each
    stage answered in turn and timed (wall and this process's CPU): the fence's result until
    every guest's define is sent, the defines' results until every start is sent (the two
    together: fence ok -> all starts dispatched), and the starts' results."""
    import cProfile

    from console.ha import runner

    guests = set(agents.running[victim])
    seen = len(agents.commands)
    agents.power_off(victim)
    t_lost = time.monotonic()

    def sent(kind: str, since: int) -> set[str]:
        """The guests named by commands of ``kind`` sent since ``since``."""
        texts = [str(c.get("args")) for _, c in agents.commands[since:] if c["kind"] == kind]
        return {g for g in guests if any(g in t for t in texts)}

    while not any(c["kind"] == "fence" for _, c in agents.commands[seen:]):
        if time.monotonic() - t_lost > 60:
            raise SystemExit(f"{victim} was not fenced within 60 s")
        time.sleep(0.25)
        agents.heartbeat()
        runner.run(cluster_id, store)
    out: dict[str, float] = {"guests": len(guests), "fence_sent_s": time.monotonic() - t_lost}
    profile = os.environ.get("HAVEN_BENCH_PROFILE")
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    for stage, then in (("fence_result", "define"), ("defines", "start"), ("starts", "")):
        mark = len(agents.commands)
        w, c = time.perf_counter(), time.process_time()
        _answer_queued(agents, cluster_id, store)  # the jobs' next steps, or the runner, go on
        out[stage + "_wall"] = time.perf_counter() - w
        out[stage + "_cpu"] = time.process_time() - c
        if then and sent(then, mark) != guests:
            missing = len(guests - sent(then, mark))
            raise SystemExit(f"after the {stage}: {missing} guests had no {then} sent")
    if prof and profile:
        prof.disable()
        prof.dump_stats(profile)
    out["all_wall"] = out["fence_result_wall"] + out["defines_wall"]
    out["all_cpu"] = out["fence_result_cpu"] + out["defines_cpu"]
    return out


def _answer_queued(agents: Any, cluster_id: int, store: Any) -> None:
    """Carry out the commands queued now (not those their results make the console send),
    and take the results in one batch, as the drainer takes what it found waiting
    (console/ha/drain.py: `ingest.apply_results` in one transaction, the next stages they
    release dispatched together, then a runner wake where one is due)."""
    from django.db import transaction

    from console.ha import ingest, runner
    from console.jobs import services as jobs

    with agents._mutex:
        queued = sorted(agents._queue)
        agents._queue.clear()
    results = []
    for _, _, host, command in queued:
        if host in agents.alive or agents.always_alive(host):
            results.append((host, agents.carry_out(host, command, store.clock()).to_dict()))
    with transaction.atomic(), jobs.batched_dispatch():  # as the drainer applies a batch
        wakes = ingest.apply_results(results)
    if cluster_id in wakes:
        runner.run(cluster_id, store)


if __name__ == "__main__":
    main()
