"""Measure the agent's latencies through a real Redis (a benchmark, not a test).

    .venv/bin/python deploy/bench/agent.py [--broker redis://127.0.0.1:6379/0] [--rounds 5]

Starts `python -m agent` against qemu:///system (the lab's tick guest; run
deploy/lab/start-libvirtd first), then for each round: define+start (command sent -> start result
received on the console queue), crash (kill -9 of the guest's QEMU -> crashed event received on
the console queue) and destroy. Also the round trip of a trivial command (host_facts).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Connection

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from agent.protocol import EXECUTE_TASK, agent_queue  # noqa: E402


def qemu_pid(guest: str) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"guest={guest},".encode() in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    raise RuntimeError(f"no qemu for {guest}")


class Console:
    def __init__(self, broker: str, queue: str) -> None:
        self.app = Celery("bench-console", broker=broker, set_as_current=False)
        self.conn = Connection(broker)
        self.queue = self.conn.SimpleQueue(queue)  # type: ignore[attr-defined]

    def send(self, host: str, cid: str, kind: str, **args: Any) -> float:
        sent = time.monotonic()
        self.app.send_task(EXECUTE_TASK, args=[{"v": 2, "id": cid, "kind": kind, "args": args}],
                           queue=agent_queue(host))  # fmt: skip
        return sent

    def wait(self, match: Any, timeout_s: float = 15.0) -> tuple[dict[str, Any], float]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                msg = self.queue.get(timeout=0.05)
            except self.queue.Empty:
                continue
            at = time.monotonic()
            msg.ack()
            payload = msg.payload[0][0]
            if match(payload):
                return payload, at
        raise TimeoutError("no matching message")


def stats(name: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    print(f"{name:42s} median {statistics.median(ms):7.1f} ms   min {min(ms):7.1f}   "
          f"max {max(ms):7.1f}   (n={len(ms)})")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--broker", default="redis://127.0.0.1:6379/0")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    if subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True).returncode:
        print("qemu:///system does not answer: run deploy/lab/start-libvirtd", file=sys.stderr)
        return 1
    lab = REPO / "var" / "bench"
    subprocess.run(
        [str(REPO / "deploy/lab/guest/build"), str(lab)], check=True, capture_output=True
    )
    host, queue = f"bench-{uuid.uuid4().hex[:6]}", f"console-bench-{uuid.uuid4().hex[:6]}"
    console = Console(args.broker, queue)
    with (lab / "agent.log").open("wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "--broker", args.broker, "--host", host,
             "--libvirt-uri", "qemu:///system", "--console-queue", queue],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        console.wait(lambda m: m["kind"] == "heartbeat")
        rtt, define_start, crash, crash_agent = [], [], [], []
        for i in range(args.rounds):
            sent = console.send(host, f"hf-{i}", "host_facts")
            _, at = console.wait(lambda m, i=i: m.get("id") == f"hf-{i}")
            rtt.append(at - sent)
            guest = f"bench-{uuid.uuid4().hex[:6]}"
            render = [str(REPO / "deploy/lab/guest/domain-xml"), guest]
            render += ["--kernel", str(lab / "tick.elf"), "--serial-log", str(lab / f"{guest}.log")]
            xml = subprocess.run(render, capture_output=True, text=True, check=True).stdout
            sent = console.send(host, f"d-{guest}", "define", xml=xml)
            console.send(host, f"s-{guest}", "start", guest=guest)
            result, at = console.wait(lambda m, g=guest: m.get("id") == f"s-{g}")
            assert result["ok"], result
            define_start.append(at - sent)
            time.sleep(0.3)
            killed, killed_wall = time.monotonic(), time.time()
            os.kill(qemu_pid(guest), signal.SIGKILL)
            event, at = console.wait(
                lambda m, g=guest: m["kind"] == "event"
                and m["guest"] == g
                and m["state"] == "crashed"
            )
            crash.append(at - killed)
            crash_agent.append(event["ts"] - killed_wall)
            console.send(host, f"u-{guest}", "undefine", guest=guest)
            console.wait(lambda m, g=guest: m.get("id") == f"u-{g}")
        print(f"agent {host} on qemu:///system, broker {args.broker}, {args.rounds} rounds")
        stats("command round trip (host_facts)", rtt)
        stats("define+start (send -> start result)", define_start)
        stats("crash (kill -9 -> crashed event on broker)", crash)
        stats("  of which kill -9 -> event in the agent", crash_agent)
    finally:
        agent.terminate()
        agent.wait(10)
        console.queue.queue.delete()
        console.conn.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
