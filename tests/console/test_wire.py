"""Trust no agent, on the real wire: a Redis with the agents' ACL users, the console's real
processes (worker, beat, ingest drainer: harness.Console) and one `python -m agent` per host,
each logged in with the user the console created for it (console/ha/credentials.py).

With h1's own login, every message class is forged for h2 (heartbeat, lifecycle event,
result), Celery messages are attached callbacks or aimed at built-in tasks, the console's keys
are deleted and other hosts' keys read: each is refused or impossible, and what the cluster
believes about h2 does not change. Each refusal has its positive control (the same message
from the right sender is taken), so a test fails if the refusal came from anything else.
"""

from __future__ import annotations

import contextlib
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
from console.clusters.models import Host
from console.ha import broker, credentials
from console.ha.models import AgentCredential
from console.ha.store import RedisStore
from console.jobs.models import Job, JobStep, StepStatus
from tests.console import factories as f
from tests.console.test_live import Live, _broker, placement, using_broker, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]
HOSTS = ("h1", "h2")
DB = 8


class Wire(Live):
    """Live, and a Redis client with any agent's login."""

    def as_agent(self, host: str) -> redis.Redis:
        return redis.Redis.from_url(self.logins[host], socket_timeout=2, decode_responses=True)


@pytest.fixture
def wire(tmp_path: Path, settings: Any) -> Iterator[Wire]:
    broker = _broker(DB)
    with using_broker(broker, settings):
        # agents restart in these tests (a kill, a rotation): a restart is no host failure here
        wire = Wire(broker, tmp_path, HAVEN_MISSED_HEARTBEATS="30")
        try:
            yield wire
        finally:
            wire.stop()


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
    """Redis refuses the call for want of rights (NOPERM, or a script's own ACL check)."""
    with pytest.raises(redis.exceptions.ResponseError) as info:
        call()
    message = str(info.value)
    assert "no permissions" in message or "can't access" in message, message
    return message


def test_one_agent_cannot_speak_or_act_for_another(wire: Wire, settings: Any) -> None:
    cluster = f.ClusterFactory(name="wire")
    hosts = {n: f.HostFactory(cluster=cluster, name=n, address="127.0.0.1") for n in HOSTS}
    for host in hosts.values():
        f.service_preferring(host)
    for name in HOSTS:
        wire.login(name)
    wire.start()
    for name in HOSTS:
        wire.agent(name)
    expected = {f"vm-{n}": ("started", n) for n in HOSTS}
    wait_for("services started on their own hosts", lambda: placement() == expected, wire)
    admin = redis.Redis.from_url(wire.broker, decode_responses=True)
    store = RedisStore(admin)
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
        lambda: h1.eval("return redis.call('del', 'console')", 0),  # scripts obey the ACL too
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
    # the agent's worker likewise: an attached callback makes the whole message refused
    mine = {"v": 2, "id": f"x-{uuid.uuid4().hex[:8]}", "kind": "destroy", "args": {}}
    mine["args"] = {"guest": "vm-h1"}
    app.send_task(EXECUTE_TASK, args=[mine], queue=agent_queue("h1"), link=callback)
    app.send_task("celery.group", args=[[dict(callback)]], kwargs={}, queue=agent_queue("h1"))
    wait_for(
        "h1's agent refusing both",
        lambda: "refused task message" in (wire.logs / "h1.log").read_text()
        and "unregistered task" in (wire.logs / "h1.log").read_text(),
        wire,
    )
    time.sleep(1.5)
    assert placement() == expected and admin.llen(agent_queue("h2")) == 0
    assert "vm-h1" in store.reports(["h1"])["h1"].running

    # --- Redis forgets the agents' users (a restart without persistence): re-created --------
    admin.execute_command("ACL", "DELUSER", "haven-agent-h1")
    forgotten = time.time()
    wait_for(
        "h1 heartbeating again",
        lambda: store.reports(["h1"])["h1"].received > forgotten + 0.5,
        wire,
    )
    assert "re-created the Redis users of h1" in wire.log_text()
    assert "haven-agent-h1" in admin.execute_command("ACL", "USERS")

    # --- a deleted host's agent loses its login at once ---------------------------------------
    hosts["h2"].delete()
    assert "haven-agent-h2" not in admin.execute_command("ACL", "USERS")
    with pytest.raises(redis.exceptions.AuthenticationError):
        wire.as_agent("h2").ping()
    time.sleep(2.5)  # the drainer's user check does not bring it back
    assert "haven-agent-h2" not in admin.execute_command("ACL", "USERS")


def _everything_in(r: redis.Redis) -> str:
    """Every value of every key of the database, with kombu's base64 message bodies decoded."""
    parts: list[str] = []
    for key in r.scan_iter("*"):
        kind = r.type(key)
        if kind == "string":
            values = [r.get(key) or ""]
        elif kind == "list":
            values = r.lrange(key, 0, -1)
        elif kind == "hash":
            values = [f"{k}={v}" for k, v in r.hgetall(key).items()]
        elif kind == "set":
            values = list(r.smembers(key))
        elif kind == "zset":
            values = list(r.zrange(key, 0, -1))
        else:
            values = [repr(r.dump(key))]
        parts.append(str(key))
        for value in values:
            parts.append(value)
            parts.extend(_bodies(value))
    return "\n".join(parts)


def _bodies(value: str) -> list[str]:
    """The decoded ``body`` of a kombu message, wherever one is inside a JSON value."""
    import base64

    out: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            body = node.get("body")
            if isinstance(body, str) and node.get("properties", {}).get("body_encoding"):
                out.append(base64.b64decode(body).decode(errors="replace"))
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    with contextlib.suppress(ValueError):
        walk(json.loads(value))
    return out


def _fence_cluster(tmp: Path, secrets: dict[str, str]) -> tuple[Path, Any, dict[str, Any], Any]:
    """Cluster "wire" of HOSTS, h2 fenced by the recording fence agent with these secrets."""
    record = tmp / "fence-calls.txt"
    cluster = f.ClusterFactory(name="wire")
    hosts = {n: f.HostFactory(cluster=cluster, name=n, address="127.0.0.1") for n in HOSTS}
    device = f.FenceDeviceFactory(
        host=hosts["h2"],
        cluster=cluster,
        name="rec-h2",
        agent="fence_haven_record",
        plug="h2",
        parameters={"record": str(record)},
    )
    device.secret_parameters = secrets
    device.save()
    return record, cluster, hosts, device


def test_no_fence_secret_at_rest_in_the_broker(wire: Wire, tmp_path: Path) -> None:
    from tests.console.views_support import login

    secrets = {"password": "pw-at-rest-never", "hexadecimal_kg": "kg-at-rest-never"}
    record, cluster, hosts, device = _fence_cluster(tmp_path, secrets)
    logins = [wire.login(n) for n in HOSTS]
    wire.start()
    for name in HOSTS:
        wire.agent(name)
    admin = redis.Redis.from_url(wire.broker, decode_responses=True)
    store = RedisStore(admin)
    wait_for("both hosts online", lambda: len(store.reports(list(HOSTS))) == 2, wire)
    wait_for(
        "the engine seeing them",
        lambda: set(hosts["h1"].__class__.objects.filter(state="online").values_list("name"))
        == {("h1",), ("h2",)},
        wire,
    )
    # h1's agent stops (a stopped one would still hold a BRPOP: Redis hands it the command),
    # so the fence test, sent to h1 while the console still counts it online, waits in its queue
    wire.kill("h1")
    response = login("admin").post(f"/clusters/{cluster.pk}/fence/{device.pk}/test/")
    assert response.status_code == 302
    job = Job.objects.get(kind="fence-test")
    step = job.steps.get()
    assert step.host == hosts["h1"]
    wait_for("the command in h1's queue", lambda: admin.llen(agent_queue("h1")) == 1, wire)
    admin.execute_command("SAVE")
    dump = _everything_in(admin)
    assert step.command_id in dump and '"sealed"' in dump  # the command is there, sealed
    assert '"expires": "20' in dump  # and it expires (Celery's header: an ISO date)
    rdb = Path(admin.config_get("dir")["dir"]) / admin.config_get("dbfilename")["dbfilename"]
    raw = rdb.read_bytes().decode("latin-1")
    for secret in [*secrets.values(), *(url.split(":")[2].split("@")[0] for url in logins)]:
        assert secret not in dump, secret
        assert secret not in raw, secret
    wire.agent("h1")
    # h1 opens the sealed arguments and runs the fence agent with the password
    wait_for(
        "the fence test done",
        lambda: Job.objects.filter(pk=job.pk, status="succeeded").exists(),
        wire,
    )
    assert record.read_text().splitlines() == ["status h2 password=yes"]
    for secret in secrets.values():
        assert secret not in _everything_in(admin)
        assert secret not in wire.log_text()


def test_rotated_credentials_reach_the_agent_over_its_own_channel(
    wire: Wire, tmp_path: Path, make_client: Any
) -> None:
    from tests.console.views_support import login

    record, cluster, hosts, device = _fence_cluster(tmp_path, {"password": "pw-rotated-never"})
    stranger = f.HostFactory(cluster=cluster, name="h3", address="127.0.0.1")
    old = {n: wire.login(n) for n in HOSTS}
    wire.start()
    for name in HOSTS:
        wire.agent(name)
    admin = redis.Redis.from_url(wire.broker, decode_responses=True)
    store = RedisStore(admin)
    wait_for(
        "both hosts online",
        lambda: Host.objects.filter(state="online").count() == 2,
        wire,
    )
    h1 = hosts["h1"]
    assert (
        make_client("operator").post(f"/api/hosts/{h1.pk}/rotate-credentials/").status_code == 403
    )
    api = make_client("admin")
    refused = api.post(f"/api/hosts/{stranger.pk}/rotate-credentials/")
    assert refused.status_code == 409
    assert "bootstrap the host again over SSH" in refused.json()["detail"]
    env_before = (tmp_path / "agent-h1.env").read_text()
    response = api.post(f"/api/hosts/{h1.pk}/rotate-credentials/")
    assert response.status_code == 202, response.content
    job_id = response.json()["id"]
    wait_for(
        "the rotation done",
        lambda: Job.objects.filter(pk=job_id, status="succeeded").exists(),
        wire,
    )
    wait_for("h1's agent restarting", lambda: wire.procs["h1"].poll() is not None, wire)
    env_after = (tmp_path / "agent-h1.env").read_text()
    new_url = next(
        ln.split("=", 1)[1] for ln in env_after.splitlines() if ln.startswith("HAVEN_AGENT_BROKER=")
    )
    assert new_url != old["h1"] and env_after != env_before
    assert oct((tmp_path / "agent-h1.env").stat().st_mode & 0o777) == "0o600"
    credential = AgentCredential.objects.get(name="h1")
    assert credential.pending_sha256 == "" and credential.pending_encrypted == ""
    password = new_url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert credential.password_sha256 == broker.password_hash(password)
    assert f"HAVEN_AGENT_SEAL_KEY={credentials.seal_key('h1')}" in env_after
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(old["h1"], socket_timeout=2).ping()  # the old password is gone
    assert redis.Redis.from_url(new_url, socket_timeout=2).ping()
    # what the supervisor does: start the agent again, now with the new credentials
    restarted = time.time()
    wire.procs.pop("h1")
    wire.agent("h1")
    wait_for(
        "h1 heartbeating with its new login",
        lambda: store.reports(["h1"])["h1"].received > restarted
        and Host.objects.filter(name="h1", state="online").exists(),
        wire,
    )
    # and secrets sealed with the new key open on h1
    assert login("admin").post(f"/clusters/{cluster.pk}/fence/{device.pk}/test/").status_code == 302
    fence = Job.objects.get(kind="fence-test")
    assert fence.steps.get().host == h1
    wait_for(
        "the fence test with the new key",
        lambda: Job.objects.filter(pk=fence.pk, status="succeeded").exists(),
        wire,
    )
    assert record.read_text().splitlines() == ["status h2 password=yes"]
    assert "pw-rotated-never" not in wire.log_text() and password not in wire.log_text()
