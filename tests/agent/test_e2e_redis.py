"""End to end: `python -m agent` as a process, commands and messages through a real Redis."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from celery import Celery

from agent.protocol import EXECUTE_TASK, agent_queue, inbound_key, message_from_dict

from .conftest import REPO, domain_xml, unique

pytestmark = pytest.mark.redis


class Console:
    """The console's side of the wire, reduced to send_task and a reader of the inbound list."""

    def __init__(self, broker: str, host: str) -> None:
        self.app = Celery("test-console", broker=broker, set_as_current=False)
        self.r = redis_py.Redis.from_url(broker, socket_timeout=5)
        self.host, self.key = host, inbound_key(host)
        self.messages: list[dict[str, Any]] = []

    def send(self, host: str, command: dict[str, Any]) -> None:
        self.app.send_task(EXECUTE_TASK, args=[command], queue=agent_queue(host))

    def wait(self, match: Any, timeout_s: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for m in self.messages:
                if match(m):
                    return m
            try:
                got = self.r.blpop([self.key], timeout=0.2)
            except redis_py.ConnectionError:
                time.sleep(0.2)
                continue
            if got is None:
                continue
            payload = json.loads(got[1])
            message_from_dict(payload)  # every message parses with the protocol module
            assert payload["host"] == self.host and payload["sent_at"] > 0
            self.messages.append(payload)
        raise AssertionError(f"no matching message in {len(self.messages)} received")

    def close(self) -> None:
        self.r.delete(self.key)
        self.r.close()


def start_agent(broker: str, host: str, log: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "agent", "--broker", broker, "--host", host,
            "--libvirt-uri", "test:///default", "--heartbeat-interval", "0.5"]  # fmt: skip
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def agent_and_console(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, Console, Path]]:
    host = unique("e2e")
    console = Console(redis_url, host)
    log = tmp_path / "agent.log"
    proc = start_agent(redis_url, host, log)
    yield host, console, log
    stop(proc)
    console.close()


def cmd(cid: str, kind: str, **args: Any) -> dict[str, Any]:
    return {"v": 2, "id": cid, "kind": kind, "args": args}


def test_commands_results_events_heartbeats(agent_and_console: tuple[str, Console, Path]) -> None:
    host, console, _log = agent_and_console
    beat = console.wait(lambda m: m["kind"] == "heartbeat")
    assert beat["host"] == host and beat["libvirt_connected"] and beat["agent_version"]
    assert beat["boot"] and beat["seq"] >= 1 and beat["sent_at"] >= beat["ts"]
    assert {"cpus", "memory_total_mib", "memory_free_mib", "host_uuid", "guests"} <= set(beat)
    guest = unique("g")
    console.send(host, cmd("d1", "define", xml=domain_xml(guest)))
    console.send(host, cmd("s1", "start", guest=guest))
    started = console.wait(lambda m: m["kind"] == "result" and m["id"] == "s1")
    assert started["ok"] and started["data"]["state"] == "running" and started["host"] == host
    event = console.wait(
        lambda m: m["kind"] == "event" and m["guest"] == guest and m["state"] == "started"
    )
    assert event["v"] == 2 and event["ts"] > 0
    console.wait(lambda m: m["kind"] == "heartbeat" and guest in {g["name"] for g in m["guests"]})
    console.send(host, cmd("s1", "start", guest=guest))  # same id again
    dup = console.wait(lambda m: m["kind"] == "result" and m["id"] == "s1" and m["duplicate"])
    assert dup["data"] == started["data"]
    console.send(host, cmd("m1", "migrate", guest=guest, dest_uri="test:///default"))
    failed = console.wait(lambda m: m["kind"] == "result" and m["id"] == "m1")
    assert not failed["ok"] and failed["error"]["code"] == "libvirt_error"
    console.send(host, {"v": 7, "id": "bad", "kind": "start"})
    bad = console.wait(lambda m: m["kind"] == "result" and m["id"] == "bad")
    assert bad["error"]["code"] == "unsupported_version"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_agent_survives_a_redis_outage(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    redis_args = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    redis = subprocess.Popen(redis_args, stdout=subprocess.DEVNULL)
    broker = f"redis://127.0.0.1:{port}/0"
    time.sleep(0.3)
    host, log = unique("outage"), tmp_path / "agent.log"
    agent = start_agent(broker, host, log)
    try:
        console = Console(broker, host)
        console.wait(lambda m: m["kind"] == "heartbeat")
        console.r.close()
        redis.kill()
        redis.wait()
        time.sleep(3)
        assert agent.poll() is None, log.read_text()  # no crash
        redis = subprocess.Popen(redis_args, stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        console = Console(broker, host)
        after = console.wait(lambda m: m["kind"] == "heartbeat", timeout_s=20)
        console.send(host, cmd("after", "host_facts"))
        assert console.wait(lambda m: m.get("id") == "after", timeout_s=20)["ok"]
        later = console.wait(lambda m: m["kind"] == "heartbeat" and m["seq"] > after["seq"])
        assert later["seq"] > after["seq"]
        text = log.read_text()
        assert "cannot reach the console's broker" in text or "Trying again" in text, text
        console.close()
    finally:
        stop(agent)
        redis.kill()
        redis.wait()
