"""Migration settings, the publisher's buffering, and heartbeats."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from agent.heartbeat import HeartbeatThread, build_heartbeat
from agent.hypervisor import LibvirtHypervisor
from agent.protocol import Event, Heartbeat, Result
from agent.publisher import Publisher

from .conftest import EventLog, Harness, domain_xml, unique


def test_configure_migration_writes_libvirt_settings(harness: Harness, tmp_path: Path) -> None:
    (tmp_path / "qemu.conf").write_text('user = "root"\nmigration_address = "1.2.3.4"\n')
    args = {
        "listen_address": "10.88.0.2",
        "migration_address": "10.88.0.2",
        "port_min": 49200,
        "port_max": 49210,
    }
    first = harness.run("configure_migration", **args)
    assert first.ok, first.error
    assert first.data["restart_required"] is True
    qemu = (tmp_path / "qemu.conf").read_text()
    assert 'user = "root"' in qemu
    assert qemu.count("migration_address") == 1 and 'migration_address = "10.88.0.2"' in qemu
    assert "migration_port_min = 49200" in qemu and "migration_port_max = 49210" in qemu
    libvirtd = (tmp_path / "libvirtd.conf").read_text()
    assert 'listen_addr = "10.88.0.2"' in libvirtd and "listen_tcp = 1" in libvirtd
    again = harness.run("configure_migration", **args)
    assert again.ok and again.data["changed"] == [] and again.data["restart_required"] is False
    tls = harness.run("configure_migration", **{**args, "transport": "tls"})
    assert "listen_tls = 1" in (tmp_path / "libvirtd.conf").read_text()
    assert tls.data["changed"] == [str(tmp_path / "libvirtd.conf")]


class FlakySender:
    """Fails while `down` is set, like a broker that went away."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.sent: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        if self.down.is_set():
            raise ConnectionError("broker away")
        self.sent.append(message)


def test_publisher_buffers_while_the_broker_is_away() -> None:
    sender = FlakySender()
    sender.down.set()
    pub = Publisher(sender, backoff_max_s=0.2)
    pub.start()
    pub.publish(Result("h", "c1", "start", True))
    pub.publish(Event("h", "lifecycle", "g", "u", "crashed", "failed", seq=1))
    for seq in range(1, 4):
        pub.publish(Heartbeat("h", "0", seq, 1.0, True, None, 1, 1, 1, []))
    time.sleep(0.3)
    assert sender.sent == []
    sender.down.clear()
    deadline = time.monotonic() + 3
    while len(sender.sent) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    pub.stop()
    kinds = [(m["kind"], m.get("id") or m.get("seq")) for m in sender.sent]
    assert kinds == [("result", "c1"), ("event", 1), ("heartbeat", 3)]  # in order; newest beat


def test_heartbeat_content(harness: Harness, test_hv: LibvirtHypervisor) -> None:
    name = unique("g")
    harness.run("define", xml=domain_xml(name))
    harness.run("start", guest=name)
    beat = build_heartbeat("h1", test_hv, 1, 1.0)
    assert beat.libvirt_connected and beat.agent_version
    assert beat.cpus and beat.memory_total_mib and beat.memory_free_mib is not None
    assert beat.guests is not None
    assert name in {g.name for g in beat.guests if g.state == "running"}


def test_heartbeat_without_libvirt_says_unknown(events: EventLog) -> None:
    beat = build_heartbeat("h1", LibvirtHypervisor("qemu+tcp://127.0.0.1:1/system", events), 1, 1.0)
    assert beat.libvirt_connected is False and beat.guests is None


def test_heartbeat_thread_beats_on_time(test_hv: LibvirtHypervisor) -> None:
    beats: list[Heartbeat] = []
    thread = HeartbeatThread("h1", test_hv, beats.append, interval_s=0.1)
    thread.start()
    time.sleep(0.55)
    thread.stop()
    assert 4 <= len(beats) <= 7
    assert [b.seq for b in beats] == list(range(1, len(beats) + 1))
