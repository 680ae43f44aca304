"""A Redis restart under a working cluster, with real processes: the console's Celery worker
and beat and three `python -m agent` on libvirt's test:/// driver (as test_live.py), against
a redis-server of the test's own (append-only file, on a free port: the test kills it, so it
never touches a Redis it did not start).

Each round: kill -9 Redis, leave it down for a moment, start it again on the same files. Then
the agents reconnect on their own, nobody is fenced (every host looked silent while Redis was
away), the console worker is still alive, and HA works: a guest destroyed behind the
cluster's back right after the restart is started again. `HAVEN_REDIS_RESTARTS=N` runs N
rounds (default 2); the numbers are printed (-s).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from agent.protocol import PROTOCOL_VERSION, agent_queue
from console.clusters.models import Host
from console.ha.models import EngineState
from console.ha.store import RedisStore
from console.jobs.models import Job, JobStatus
from console.jobs.transport import CeleryTransport
from tests.console import factories as f
from tests.console.test_live import FIXTURES, HOSTS, Live, placement, using_broker, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]
ROUNDS = int(os.environ.get("HAVEN_REDIS_RESTARTS", "2"))
#: "prefork" runs the worker as deploy/quickstart does (threads otherwise, as the live tests)
POOL = os.environ.get("HAVEN_REDIS_RESTART_POOL", "threads")
DOWN_S = float(os.environ.get("HAVEN_REDIS_DOWN_S", "2"))  # how long Redis stays away


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """redis-server as Haven starts it (append-only file, fsync every second)."""

    def __init__(self, root: Path) -> None:
        self.port, self.dir = _free_port(), root / "redis"
        self.dir.mkdir(parents=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--dir",
                str(self.dir),
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            start_new_session=True,
        )
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def live(own_redis: OwnRedis, tmp_path: Path, settings: Any) -> Iterator[Live]:
    with using_broker(own_redis.url, settings):
        live = Live(own_redis.url, tmp_path / "logs")
        if POOL == "prefork":
            live.worker_pool = ("--pool", "prefork", "--concurrency", "2")
        try:
            yield live
        finally:
            live.stop()


def _destroy(guest: str, host: str) -> None:
    """virsh destroy behind the cluster's back (each agent has its own test:/// driver)."""
    command = {"v": PROTOCOL_VERSION, "id": f"x-{uuid.uuid4().hex[:8]}", "kind": "destroy"}
    command["args"] = {"guest": guest}
    CeleryTransport().send(host, command, command)


def make_cluster(record: Path) -> Any:
    """Hosts h1..h3 (fence agents that record their calls in `record`), vm-hN preferring hN."""
    cluster = f.ClusterFactory(name="restart")
    for name in HOSTS:
        host = f.HostFactory(cluster=cluster, name=name, address="127.0.0.1")
        f.recording_fence(host, record)
        f.service_preferring(host)
    return cluster


def start_all(live: Live) -> dict[str, tuple[str, str | None]]:
    """The console's processes and one agent per host; returns the placement once reached."""
    assert FIXTURES.is_dir()
    live.start()
    for name in HOSTS:
        live.agent(name)
    expected: dict[str, tuple[str, str | None]] = {f"vm-{n}": ("started", n) for n in HOSTS}
    wait_for("services started on their preferred hosts", lambda: placement() == expected, live)
    return expected


def _fences(record: Path) -> list[str]:
    lines = record.read_text().splitlines() if record.exists() else []
    return [line for line in lines if not line.startswith("status ")]


def test_redis_restarts_lock_nobody_out_and_fence_nobody(
    live: Live, own_redis: OwnRedis, tmp_path: Path, settings: Any
) -> None:
    record = tmp_path / "fence-calls.txt"
    cluster = make_cluster(record)
    start_all(live)
    store = RedisStore(redis.Redis.from_url(own_redis.url, socket_timeout=2, decode_responses=True))

    # A command that has outlived its ttl (here: sent already expired) is dropped by the agent.
    settings.HAVEN_COMMAND_TTL_S = -5
    _destroy("vm-h3", "h3")
    settings.HAVEN_COMMAND_TTL_S = 60
    wait_for("h3's agent to take it", lambda: store.r.llen(agent_queue("h3")) == 0, live)
    time.sleep(2)
    assert placement()["vm-h3"] == ("started", "h3")
    assert Job.objects.filter(kind="start", params__service="vm-h3").count() == 1

    resumed: list[float] = []
    reconnected: list[float] = []
    for round_ in range(ROUNDS):
        starts_before = Job.objects.filter(kind="start", status=JobStatus.SUCCEEDED).count()
        own_redis.kill()
        time.sleep(DOWN_S)
        own_redis.start()
        back = time.time()
        store.r.connection_pool.reset()
        victim, victim_host = f"vm-{HOSTS[round_ % 3]}", HOSTS[round_ % 3]
        _destroy(victim, victim_host)  # queued until that agent is back

        def all_heartbeating(since: float = back) -> bool:
            reports = store.reports(list(HOSTS))
            return len(reports) == len(HOSTS) and all(r.received > since for r in reports.values())

        wait_for(f"round {round_ + 1}: every agent heartbeating again", all_heartbeating, live, 60)
        reconnected.append(time.time() - back)
        wait_for(
            f"round {round_ + 1}: {victim} started again on {victim_host}",
            lambda v=victim, h=victim_host, n=starts_before: (
                placement()[v] == ("started", h)
                and Job.objects.filter(kind="start", status=JobStatus.SUCCEEDED).count() > n
            ),
            live,
            60,
        )
        resumed.append(time.time() - back)
        # the consumers retry at most 2 s apart (agent/reconnect.py), not kombu's up to 30 s
        assert reconnected[-1] < 5 and resumed[-1] < 10, (reconnected, resumed)
        assert live.procs["worker"].poll() is None, f"the console worker died\n{live.report()}"
        assert live.procs["beat"].poll() is None, f"beat died\n{live.report()}"
        assert not _fences(record), f"a host was fenced: {_fences(record)}\n{live.report()}"
        assert not Job.objects.filter(kind="fence").exists()
        states = set(Host.objects.values_list("state", flat=True))
        assert states == {"online"}, states
    assert EngineState.objects.get(cluster=cluster).ticks > 0
    print(
        f"\n{ROUNDS} Redis restarts (down {DOWN_S:.0f} s each): worker alive after each, "
        f"0 fenced; agents back after {', '.join(f'{s:.1f}' for s in reconnected)} s; "
        f"destroyed guest running again after {', '.join(f'{s:.1f}' for s in resumed)} s"
    )
