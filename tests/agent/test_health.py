"""Health checks and managed save against libvirt's test:///default driver and real local
TCP/HTTP servers standing in for the guest's application.

The test driver emits no watchdog or panic events of its own: those tests call the driver's
registered event callbacks with a real test-driver domain (the lab proves the real events,
tests/lab/test_health_lab.py). It has no guest agent either, so `guest-ping` fails there for
real (libvirt's own error), which is what the miss counting is tested with.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator

import libvirt
import pytest

from agent.errors import AgentError
from agent.health import HealthMonitor, checked_spec, probe_http, probe_tcp
from agent.heartbeat import build_heartbeat
from agent.hypervisor import LibvirtHypervisor
from agent.protocol import HealthSpec, ProtocolError

from .conftest import Harness, domain_xml, unique


def health_xml(name: str, spec: HealthSpec) -> str:
    return domain_xml(name).replace("</domain>", f"<metadata>{spec.to_xml()}</metadata></domain>")


class Reports:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def __call__(self, guest: str, check: str, detail: str) -> None:
        self.seen.append((guest, check, detail))


class App:
    """A real HTTP server on 127.0.0.1 (also a TCP listener): the guest's application."""

    def __init__(self) -> None:
        self.status = 200
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(app.status)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.allow_reuse_address = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def app() -> Iterator[App]:
    a = App()
    a.start()
    yield a
    a.stop()


def poll_until(monitor: HealthMonitor, cond: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        monitor.poll_once()
        if callable(cond) and cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


# --- the spec ---------------------------------------------------------------------------------


def test_spec_round_trips_through_domain_xml_and_bad_values_are_refused() -> None:
    spec = HealthSpec(
        watchdog=True,
        agent_interval_s=5,
        probe="http",
        probe_host="10.0.0.5",
        probe_port=8080,
        probe_path="/health?x=1",
    )
    assert HealthSpec.from_domain_xml(health_xml("g", spec)) == spec
    assert HealthSpec.from_domain_xml(domain_xml("g")) is None
    bad = health_xml("g", spec).replace('probe="http"', 'probe="icmp"')
    with pytest.raises(ProtocolError, match="health probe"):
        HealthSpec.from_domain_xml(bad)
    bad = health_xml("g", spec).replace('probe_misses="3"', 'probe_misses="0"')
    with pytest.raises(ProtocolError, match="probe_misses"):
        HealthSpec.from_domain_xml(bad)
    with pytest.raises(AgentError, match="invalid host address"):
        checked_spec(HealthSpec(probe="tcp", probe_host="a b;rm", probe_port=80))
    with pytest.raises(AgentError, match="invalid URL path"):
        checked_spec(HealthSpec(probe="http", probe_host="h", probe_port=80, probe_path="x y"))
    with pytest.raises(AgentError, match="invalid probe port"):
        checked_spec(HealthSpec(probe="tcp", probe_host="h", probe_port=0))


def test_probes_against_a_real_server(app: App) -> None:
    assert probe_tcp("127.0.0.1", app.port, 1.0) is None
    assert probe_http("127.0.0.1", app.port, "/", 1.0) is None
    app.status = 503
    assert "status 503" in (probe_http("127.0.0.1", app.port, "/", 1.0) or "")
    app.stop()
    assert "refused" in (probe_tcp("127.0.0.1", app.port, 1.0) or "").lower()
    assert probe_http("127.0.0.1", app.port, "/", 1.0) is not None


# --- the monitor on the test driver -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["tcp", "http"])
def test_probe_failure_is_latched_reported_and_cleared_by_a_restart(
    harness: Harness, test_hv: LibvirtHypervisor, app: App, kind: str
) -> None:
    name = unique("g")
    spec = HealthSpec(probe=kind, probe_host="127.0.0.1", probe_port=app.port, probe_interval_s=0.1)
    assert harness.run("define", xml=health_xml(name, spec)).ok
    assert harness.run("start", guest=name).ok
    reports = Reports()
    monitor = HealthMonitor(test_hv, reports)
    for _ in range(5):  # the application answers: healthy
        monitor.poll_once()
        time.sleep(0.11)
    assert monitor.unhealthy({name}) == {} and reports.seen == []
    app.stop()  # the application dies, the guest keeps running
    poll_until(monitor, lambda: reports.seen)
    ((guest, check, detail),) = reports.seen
    assert (guest, check) == (name, "probe") and "(3/3 misses)" in detail
    beat = build_heartbeat("testhost", test_hv, 1, 1.0, health=monitor)
    assert beat.unhealthy[name]["check"] == "probe"
    assert name in {g.name for g in beat.guests or []}  # QEMU alive: hung, not crashed
    # the console's recovery: destroy, start in place; the application is back
    app.start()
    assert harness.run("destroy", guest=name).ok
    assert harness.run("start", guest=name).ok
    monitor.on_started(name)  # the agent does this on the "started" lifecycle event
    for _ in range(5):
        monitor.poll_once()
        time.sleep(0.11)
    assert monitor.unhealthy({name}) == {} and len(reports.seen) == 1
    assert harness.run("destroy", guest=name).ok


def test_guest_agent_ping_misses_on_the_test_driver(
    harness: Harness, test_hv: LibvirtHypervisor
) -> None:
    name = unique("g")
    spec = HealthSpec(agent_interval_s=0.1, agent_misses=2)
    assert harness.run("define", xml=health_xml(name, spec)).ok
    assert harness.run("start", guest=name).ok
    assert test_hv.guest_ping(name, 1.0) is not None  # the test driver has no guest agent
    reports = Reports()
    monitor = HealthMonitor(test_hv, reports)
    poll_until(monitor, lambda: reports.seen)
    assert reports.seen[0][:2] == (name, "guest-agent")
    assert "(2/2 misses)" in reports.seen[0][2]
    assert harness.run("destroy", guest=name).ok


def test_watchdog_and_panic_events_count_only_when_enabled(
    harness: Harness, test_hv: LibvirtHypervisor
) -> None:
    on, off = unique("g"), unique("g")
    assert harness.run("define", xml=health_xml(on, HealthSpec(watchdog=True, panic=True))).ok
    assert harness.run("define", xml=domain_xml(off)).ok
    for g in (on, off):
        assert harness.run("start", guest=g).ok
    reports = Reports()
    monitor = HealthMonitor(test_hv, reports)
    test_hv._on_watchdog = monitor.on_watchdog
    conn = libvirt.open("test:///default")
    try:
        for g in (on, off):  # libvirt's watchdog callback, with real domains
            test_hv._watchdog(
                conn, conn.lookupByName(g), libvirt.VIR_DOMAIN_EVENT_WATCHDOG_NONE, None
            )
    finally:
        conn.close()
    assert reports.seen == [(on, "watchdog", "watchdog action none")]
    monitor.on_panic(on, "panicked")  # latched already: reported once
    assert len(reports.seen) == 1
    # a guest that is gone (on_crash destroy) is still reported: the console reads the reason
    assert harness.run("destroy", guest=on).ok
    assert monitor.unhealthy(set()) == {on: {"check": "watchdog", "detail": "watchdog action none"}}
    monitor.on_started(on)
    monitor.on_panic(on, "panicked")
    assert reports.seen[-1] == (on, "panic", "panicked")
    for g in (on, off):
        harness.run("destroy", guest=g)


# --- managed save -----------------------------------------------------------------------------


@pytest.fixture
def running(harness: Harness, test_hv: LibvirtHypervisor) -> str:
    """A guest defined and started on libvirt's test driver."""
    name = unique("g")
    assert harness.run("define", xml=domain_xml(name)).ok
    assert harness.run("start", guest=name).ok
    return name


def test_shutdown_with_save_then_resume_or_fresh_boot(harness: Harness, running: str) -> None:
    name = running
    saved = harness.run("shutdown", guest=name, save=True)
    assert saved.ok and saved.data["how"] == "saved" and saved.data["state"] == "shutoff"
    conn = libvirt.open("test:///default")
    try:
        assert conn.lookupByName(name).hasManagedSaveImage(0) == 1
        resumed = harness.run("start", guest=name, resume=True)
        assert resumed.ok and resumed.data["resumed"] is True
        assert harness.run("shutdown", guest=name, save=True).data["how"] == "saved"
        fresh = harness.run("start", guest=name)  # no resume: the image is dropped first
        assert fresh.ok and fresh.data["resumed"] is False and fresh.data["changed"] is True
        assert conn.lookupByName(name).hasManagedSaveImage(0) == 0
    finally:
        conn.close()
    assert harness.run("destroy", guest=name).ok


def test_save_refused_falls_back_to_a_shutdown_with_the_reason(
    harness: Harness, running: str
) -> None:
    name = running
    conn = libvirt.open("test:///default")
    try:
        # a transient guest cannot be managed-saved: libvirt refuses, the agent shuts it down
        conn.lookupByName(name).undefine()
        result = harness.run("shutdown", guest=name, save=True, timeout_s=2)
    finally:
        conn.close()
    assert result.ok, result.error
    assert result.data["how"] in ("shutdown", "destroyed")
    assert result.data["save_error"]


def test_simulated_memory_is_reported_instead_of_the_machines(events: object) -> None:
    """HAVEN_SIMULATED_MEMORY_MIB (a lab's hosts share one machine): total = N, free = N minus
    the active guests' memory."""
    from agent.__main__ import settings_from_args

    hv = LibvirtHypervisor("test:///default", events, memory_mib=65536)  # type: ignore[arg-type]
    try:
        facts = hv.host_facts()
        conn = libvirt.open("test:///default")
        active = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        used = sum(d.info()[1] for d in active) // 1024
        conn.close()
        assert facts.memory_total_mib == 65536 and facts.memory_free_mib == 65536 - used
    finally:
        hv.close()
    env = {"HAVEN_AGENT_BROKER": "redis://h:6379/0", "HAVEN_SIMULATED_MEMORY_MIB": "4096"}
    assert settings_from_args(["--host", "h1"], env).memory_mib == 4096
    assert (
        settings_from_args(["--host", "h1"], {"HAVEN_AGENT_BROKER": "redis://h/0"}).memory_mib
        is None
    )
    with pytest.raises(SystemExit):
        settings_from_args(["--host", "h1"], {**env, "HAVEN_SIMULATED_MEMORY_MIB": "lots"})
