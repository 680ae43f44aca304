"""Trust no agent, on the real wire: a Redis with the agents' ACL users, the console's real
processes (worker, beat, ingest drainer: harness.Console) and one `python -m agent` per host,
each logged in with the user the console created for it (console/runtime/credentials.py).

With h1's own login, every message class is forged for h2 (heartbeat, lifecycle event,
result), Celery messages are attached callbacks or aimed at built-in tasks, the console's keys
are deleted and other hosts' keys read: each is refused or impossible, and what the cluster
believes about h2 does not change. Each refusal has its positive control (the same message
from the right sender is taken), so a test fails if the refusal came from anything else.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import signature

from agent.protocol import EXECUTE_TASK, agent_queue, broker_keys, inbound_key
from console.jobs.models import Job, JobStep, StepStatus
from console.runtime import credentials
from console.runtime.store import Store
from tests.console import factories as f
from tests.console.test_live import Live, _broker, placement, using_broker, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]
HOSTS = ("h1", "h2")
DB = 8


class Wire(Live):
    """Live, with each agent logged in as its own Redis user."""

    def __init__(self, broker: str, tmp: Path) -> None:
        super().__init__(broker, tmp)
        self.logins: dict[str, str] = {}

    def login(self, host: str) -> str:
        issued = credentials.issue(host)
        base = self.broker.split("://", 1)[1]
        url = f"redis://{issued.user}:{issued.password}@{base}"
        self.logins[host] = url
        return url

    def agent(self, host: str, broker: str | None = None) -> None:
        super().agent(host, broker or self.logins[host])

    def as_agent(self, host: str) -> redis.Redis:
        return redis.Redis.from_url(self.logins[host], socket_timeout=2, decode_responses=True)


@pytest.fixture
def wire(tmp_path: Path, settings: Any) -> Iterator[Wire]:
    broker = _broker(DB)
    with using_broker(broker, settings):
        wire = Wire(broker, tmp_path)
        try:
            yield wire
        finally:
            wire.stop()
            for host in HOSTS:
                credentials.revoke(host, redis.Redis.from_url(broker))


def _hb(host: str, guests: list[str]) -> str:
    return json.dumps(
        {
            "v": 2,
            "kind": "heartbeat",
            "host": host,
            "agent_version": "forged",
            "boot": "forged",
            "seq": 1,
            "interval_s": 1.0,
            "libvirt_connected": True,
            "host_uuid": "forged",
            "cpus": 64,
            "memory_total_mib": 1 << 20,
            "memory_free_mib": 1 << 20,
            "guests": [{"name": g, "uuid": "", "state": "running"} for g in guests],
            "ts": time.time(),
            "sent_at": time.time(),
        }
    )


def _event(host: str, guest: str, state: str) -> str:
    return json.dumps(
        {
            "v": 2,
            "kind": "event",
            "event": "lifecycle",
            "host": host,
            "guest": guest,
            "uuid": "",
            "state": state,
            "detail": "failed",
            "seq": 1,
            "ts": time.time(),
            "sent_at": time.time(),
        }
    )


def _result(host: str, command_id: str) -> str:
    return json.dumps(
        {
            "v": 2,
            "kind": "result",
            "host": host,
            "id": command_id,
            "command": "host_facts",
            "ok": True,
            "data": {"forged": True},
            "error": None,
            "duration_s": 0.0,
            "duplicate": False,
            "ts": time.time(),
            "sent_at": time.time(),
        }
    )


def _refused(call: Any) -> str:
    with pytest.raises(redis.exceptions.NoPermissionError) as info:
        call()
    return str(info.value)


def test_one_agent_cannot_speak_or_act_for_another(wire: Wire, settings: Any) -> None:
    cluster = f.ClusterFactory(name="wire")
    hosts = {n: f.HostFactory(cluster=cluster, name=n, address="127.0.0.1") for n in HOSTS}
    for name, host in hosts.items():
        domain = f.FailoverDomainFactory(cluster=cluster, name=f"prefer-{name}", ordered=True)
        f.FailoverDomainMemberFactory(domain=domain, host=host, priority=1)
        f.VmServiceFactory(
            cluster=cluster,
            name=f"vm-{name}",
            failover_domain=domain,
            domain_xml=(
                f"<domain type='test'><name>vm-{name}</name>"
                "<memory unit='KiB'>1024</memory><vcpu>1</vcpu>"
                "<os><type>hvm</type></os></domain>"
            ),
        )
    for name in HOSTS:
        wire.login(name)
    wire.start()
    for name in HOSTS:
        wire.agent(name)
    expected = {f"vm-{n}": ("started", n) for n in HOSTS}
    wait_for("services started on their own hosts", lambda: placement() == expected, wire)
    admin = redis.Redis.from_url(wire.broker, decode_responses=True)
    store = Store(admin)
    h1 = wire.as_agent("h1")
    jobs_before = Job.objects.count()

    # --- the transport: h1's login reaches h1's keys only --------------------------------
    assert "no permissions" in _refused(lambda: h1.rpush(inbound_key("h2"), _hb("h2", [])))
    for forbidden in (
        lambda: h1.delete("console"),
        lambda: h1.delete(inbound_key("h2")),
        lambda: h1.delete(inbound_key("h1")),  # not even its own: write-only
        lambda: h1.expire("console", 1),
        lambda: h1.delete("haven:hb"),
        lambda: h1.lpush("console", "{}"),
        lambda: h1.rpush("console", "{}"),
        lambda: h1.lrange(inbound_key("h1"), 0, -1),
        lambda: h1.lrange(agent_queue("h2"), 0, -1),
        lambda: h1.lpush(agent_queue("h2"), "{}"),
        lambda: h1.hgetall(broker_keys("h2")["unacked"]),
        lambda: h1.hgetall("haven:hb"),
        lambda: h1.get("haven:lock:runner:1"),
        lambda: h1.brpop([agent_queue("h1.dc2")], timeout=1),  # no pattern: h1 is not h1.*
        lambda: h1.scan(0),
        lambda: h1.keys("*"),
        lambda: h1.flushdb(),
        lambda: h1.execute_command("ACL", "LIST"),
        lambda: h1.publish("celeryev", "x"),
        lambda: h1.eval("return redis.call('del', KEYS[1])", 1, "console"),
    ):
        _refused(forbidden)
    assert h1.rpush(inbound_key("h1"), _hb("h1", ["vm-h1"])) >= 1  # what it may do

    # --- bodies that speak for another host on h1's own list are refused -------------------
    h2_before = store.reports(["h2"])["h2"]
    h1.rpush(inbound_key("h1"), _hb("h2", []))  # "h2 runs nothing"
    h1.rpush(inbound_key("h1"), _event("h2", "vm-h2", "crashed"))
    pending = JobStep.objects.create(
        job=f.JobFactory(cluster=cluster, kind="probe"),
        seq=1,
        host=hosts["h2"],
        kind="host_facts",
        command_id=f"c-{uuid.uuid4().hex[:12]}",
        status=StepStatus.DISPATCHED,
    )
    h1.rpush(inbound_key("h1"), _result("h2", pending.command_id))  # body says h2
    h1.rpush(inbound_key("h1"), _result("h1", pending.command_id))  # h1, for h2's step
    time.sleep(2.5)  # two runner ticks
    assert store.reports(["h2"])["h2"].running == h2_before.running >= {"vm-h2"}
    assert store.reports(["h2"])["h2"].heartbeat["agent_version"] != "forged"
    assert store.reports(["h2"])["h2"].received > h2_before.received  # h2's own still arrive
    assert json.loads(admin.hget("haven:ev:h2", "vm-h2") or "{}").get("state") != "crashed"
    assert placement() == expected
    assert Job.objects.exclude(kind="probe").count() == jobs_before  # no restart, no fence
    pending.refresh_from_db()
    assert pending.status == StepStatus.DISPATCHED and pending.result == {}
    log = wire.log_text()
    assert "refused a message on h1's inbound list: it speaks for host 'h2'" in log
    assert f"refused a result for command {pending.command_id} from h1" in log
    # the positive control: the same result from h2's own login is taken
    wire.as_agent("h2").rpush(inbound_key("h2"), _result("h2", pending.command_id))
    wait_for(
        "h2's own result applied",
        lambda: JobStep.objects.get(pk=pending.pk).status == StepStatus.SUCCEEDED,
        wire,
    )

    # --- the console's worker runs Haven's tasks only, without attachments -----------------
    from console.celery import app

    destroy = {"v": 2, "id": f"x-{uuid.uuid4().hex[:8]}", "kind": "destroy", "args": {}}
    destroy["args"] = {"guest": "vm-h2"}
    callback = signature(EXECUTE_TASK, args=[destroy], queue=agent_queue("h2"))
    # even with the console's own rights (no agent can write the console's queue at all)
    app.send_task("haven.console.wake", args=[cluster.pk], link=callback)
    app.send_task("haven.console.wake", args=[cluster.pk], link_error=callback)
    app.send_task("celery.group", args=[[dict(callback)]], kwargs={})
    app.send_task("celery.chain", args=[[dict(callback)]], kwargs={})
    app.send_task("celery.map", args=[dict(callback), [[destroy]]], kwargs={})
    wait_for(
        "the worker refusing the attached and the built-in",
        lambda: wire.log_text().count("refused task message") >= 2
        and wire.log_text().count("unregistered task") >= 3,
        wire,
    )
    time.sleep(1.5)
    assert placement() == expected
    assert admin.llen(agent_queue("h2")) == 0
    assert "vm-h2" in store.reports(["h2"])["h2"].running  # h2 was never told to destroy it
    from console.celery import app as console_app

    assert sorted(n for n in console_app.tasks if not n.startswith("haven.")) == []
