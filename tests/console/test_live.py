"""The console at work, with real processes: a Redis, the console's Celery worker and beat,
and one `python -m agent` per host on libvirt's test:/// driver (each its own host).

These prove the wiring end to end: services start on their preferred hosts, a guest stopped
behind the cluster's back is restarted, a host whose agent dies is fenced (by a fence agent
that records the call) before its guests start elsewhere, and a migration the driver cannot do
ends in a failed job with libvirt's own error while the guest keeps running on the source.
Real live migration needs real hosts: see tests/lab.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from agent.protocol import EXECUTE_TASK, agent_queue
from console.jobs.models import Job, JobStatus
from console.services.models import VmService
from tests.console import factories as f
from tests.lab import harness

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).with_name("fixtures")
pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]
HOSTS = ("h1", "h2", "h3")


def _broker(db: int = 7) -> str:
    url = settings.REDIS_URL.rsplit("/", 1)[0] + f"/{db}"  # a database of its own
    r = redis.Redis.from_url(url, socket_timeout=2)
    try:
        r.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {url}: {exc}")
    r.flushdb()
    return url


def _db_url() -> str:
    name = settings.DATABASES["default"]["NAME"]
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3") and (
        not name or str(name).startswith("file:") or name == ":memory:"
    ):
        pytest.skip("the live tests need a test database other processes can open")
    engine = settings.DATABASES["default"]["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{name}"
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


class Live(harness.Console):
    """The console's processes (harness.Console), plus agents on test:/// hosts, each logged in
    as the Redis user the console creates for it, with its sealing key, from an env file
    written as the SSH bootstrap writes it."""

    def __init__(self, broker: str, tmp: Path, **env: str) -> None:
        super().__init__(broker, _db_url(), tmp, **{"HAVEN_LOG_LEVEL": "WARNING", **env})
        self.broker, self.tmp = broker, tmp
        self.logins: dict[str, str] = {}

    def login(self, host: str) -> str:
        """The agent's broker URL (its own user); its env file is ``agent-<host>.env``."""
        from console.bootstrap import ssh as bootstrap
        from console.ha import credentials

        issued = credentials.issue(host)
        url = bootstrap.agent_broker_url(issued.user, issued.password)
        fd = os.open(self.tmp / f"agent-{host}.env", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(bootstrap.agent_env_file(host, url, {}, seal_key=issued.seal_key))
        self.logins[host] = url
        return url

    def stop(self) -> None:
        from console.ha import credentials

        super().stop()
        for host in self.logins:
            credentials.revoke(host)

    def agent(self, host: str) -> None:
        if host not in self.logins:
            self.login(host)
        self._start(
            host,
            [
                sys.executable,
                "-m",
                "agent",
                "--broker-file",
                str(self.tmp / f"agent-{host}.env"),
                "--host",
                host,
                "--libvirt-uri",
                "test:///default",
                "--fence-path",
                str(FIXTURES),
                "--log-level",
                "WARNING",
            ],
        )

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def report(self) -> str:
        from console.events.models import Event

        events = "\n".join(
            f"{e.actor} {e.verb} {e.object_name}: {e.result} {e.message}"
            for e in reversed(Event.objects.order_by("-id")[:40])
        )
        files = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in self.tmp.glob("*.log"))
        return f"{files}\n--- last events\n{events}"


@contextmanager
def using_broker(broker: str, settings: Any) -> Iterator[None]:
    """The test's console code (and its Celery app) on ``broker`` for the duration."""
    settings.REDIS_URL = broker
    settings.CELERY_BROKER_URL = broker
    from console.celery import app, use_broker

    previous = app.conf.broker_url
    use_broker(broker)
    try:
        yield
    finally:
        use_broker(previous)


@pytest.fixture
def live(tmp_path: Path, settings: Any) -> Iterator[Live]:
    broker = _broker()
    with using_broker(broker, settings):
        live = Live(broker, tmp_path)
        try:
            yield live
        finally:
            live.stop()


def wait_for(what: str, check: Callable[[], Any], live: Live, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{live.report()}")


def placement() -> dict[str, tuple[str, str | None]]:
    return {
        s.name: (s.state, s.host.name if s.host else None)
        for s in VmService.objects.select_related("host").order_by("name")
    }


def test_cluster_at_work(live: Live, tmp_path: Path, make_client: Any, settings: Any) -> None:
    record = tmp_path / "fence-calls.txt"
    cluster = f.ClusterFactory(name="live")
    hosts = {n: f.HostFactory(cluster=cluster, name=n, address="127.0.0.1") for n in HOSTS}
    for host in hosts.values():
        device = f.recording_fence(host, record)
        device.secret_parameters = {"password": "pw-never-logged"}
        device.save()
        f.service_preferring(host)
    live.start()
    for name in HOSTS:
        live.agent(name)

    # 1. every service starts on its preferred host
    expected = {f"vm-{n}": ("started", n) for n in HOSTS}
    wait_for("services started on their preferred hosts", lambda: placement() == expected, live)

    # 2. a guest destroyed behind the cluster's back (virsh destroy) is restarted in place
    from console.celery import app

    app.send_task(
        EXECUTE_TASK,
        args=[
            {
                "v": 2,
                "id": f"x-{uuid.uuid4().hex[:8]}",
                "kind": "destroy",
                "args": {"guest": "vm-h2"},
            }
        ],
        queue=agent_queue("h2"),
    )
    wait_for(
        "a restart job for vm-h2",
        lambda: Job.objects.filter(kind="start", params__service="vm-h2").count() == 2,
        live,
    )
    wait_for(
        "vm-h2 running again on h2",
        lambda: placement()["vm-h2"] == ("started", "h2")
        and Job.objects.filter(
            kind="start", params__service="vm-h2", status=JobStatus.SUCCEEDED
        ).count()
        == 2,
        live,
    )

    # 3. a migration the test driver cannot do fails with libvirt's own error; nothing moves
    wait_for("vm-h1 settled on h1", lambda: placement()["vm-h1"] == ("started", "h1"), live)
    api = make_client("operator")
    service = VmService.objects.get(name="vm-h1")
    response = api.post(f"/api/services/{service.pk}/migrate/", {"host": "h3"}, format="json")
    assert response.status_code == 202, response.content
    job_id = response.json()["id"]
    job = wait_for(
        "the migrate job to end",
        lambda: Job.objects.filter(
            pk=job_id, status__in=[JobStatus.FAILED, JobStatus.SUCCEEDED]
        ).first(),
        live,
    )
    assert job.status == JobStatus.FAILED
    assert "migrat" in job.explanation.lower() and "h1" in job.explanation, job.explanation
    time.sleep(1.5)
    assert placement()["vm-h1"] == ("started", "h1")

    # 4. h3's agent dies: unreachable, fenced through another host's agent, guest elsewhere
    live.kill("h3")
    wait_for("h3 fenced", lambda: record.exists() and "h3" in record.read_text(), live)
    assert record.read_text().splitlines()[0] == f"{settings.HAVEN_FENCE_ACTION} h3 password=yes"
    state = wait_for(
        "vm-h3 running elsewhere",
        lambda: (placement()["vm-h3"][0] == "started" and placement()["vm-h3"][1] in ("h1", "h2")),
        live,
    )
    assert state
    fence_job = Job.objects.get(kind="fence")
    assert fence_job.status == JobStatus.SUCCEEDED
    started_elsewhere = Job.objects.filter(kind="start", params__service="vm-h3").latest("pk")
    assert started_elsewhere.created >= fence_job.finished  # never before the fence succeeded
    logs = live.report()
    assert "pw-never-logged" not in logs
