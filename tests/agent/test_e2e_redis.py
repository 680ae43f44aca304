"""End to end: `python -m agent` as a process, commands and messages through a real Redis."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kombu import Connection

from agent.protocol import EXECUTE_TASK, RECEIVE_TASK, agent_queue, message_from_dict

from .conftest import REPO, domain_xml, unique

pytestmark = pytest.mark.redis


class Console:
    """The console's side of the wire, reduced to send_task and a raw queue reader."""

    def __init__(self, broker: str, queue: str) -> None:
        self.app = Celery("test-console", broker=broker, set_as_current=False)
        self.conn = Connection(broker)
        self.queue = self.conn.SimpleQueue(queue)
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
                msg = self.queue.get(timeout=0.2)
            except self.queue.Empty:
                continue
            assert msg.headers["task"] == RECEIVE_TASK
            payload = msg.payload[0][0]
            message_from_dict(payload)  # every message parses with the protocol module
            self.messages.append(payload)
            msg.ack()
        raise AssertionError(f"no matching message in {len(self.messages)} received")

    def close(self) -> None:
        self.queue.queue.delete()
        self.queue.close()
        self.conn.release()


def start_agent(broker: str, host: str, queue: str, log: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "agent", "--broker", broker, "--host", host,
            "--libvirt-uri", "test:///default", "--console-queue", queue,
            "--heartbeat-interval", "0.5"]  # fmt: skip
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
    host, queue = unique("e2e"), unique("console")
    console = Console(redis_url, queue)
    log = tmp_path / "agent.log"
    proc = start_agent(redis_url, host, queue, log)
    yield host, console, log
    stop(proc)
    console.close()


def cmd(cid: str, kind: str, **args: Any) -> dict[str, Any]:
    return {"v": 1, "id": cid, "kind": kind, "args": args}


def test_commands_results_events_heartbeats(agent_and_console: tuple[str, Console, Path]) -> None:
    host, console, _log = agent_and_console
    beat = console.wait(lambda m: m["kind"] == "heartbeat")
    assert beat["host"] == host and beat["libvirt_connected"] and beat["agent_version"]
    assert {"cpus", "memory_total_mib", "memory_free_mib", "host_uuid", "guests"} <= set(beat)
    guest = unique("g")
    console.send(host, cmd("d1", "define", xml=domain_xml(guest)))
    console.send(host, cmd("s1", "start", guest=guest))
    started = console.wait(lambda m: m["kind"] == "result" and m["id"] == "s1")
    assert started["ok"] and started["data"]["state"] == "running" and started["host"] == host
    event = console.wait(
        lambda m: m["kind"] == "event" and m["guest"] == guest and m["state"] == "started"
    )
    assert event["v"] == 1 and event["ts"] > 0
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
    host, queue, log = unique("outage"), unique("console"), tmp_path / "agent.log"
    agent = start_agent(broker, host, queue, log)
    try:
        console = Console(broker, queue)
        console.wait(lambda m: m["kind"] == "heartbeat")
        console.conn.release()
        redis.kill()
        redis.wait()
        time.sleep(3)
        assert agent.poll() is None, log.read_text()  # no crash
        redis = subprocess.Popen(redis_args, stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        console = Console(broker, queue)
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
