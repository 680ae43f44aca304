"""Health checks beyond "QEMU is alive": the guest's watchdog, a guest panic, the guest agent,
and an application probe (agent/protocol.py `HealthSpec`; the console writes each guest's
checks into its domain XML, so they travel with it).

Watchdog and panic arrive as libvirt events (`on_watchdog`, `on_panic`); the guest-agent ping and
the probe are polled by the monitor's own thread, each every N s, failed after M misses in a row.
A failure is *latched* until the guest starts again: it is sent at once as a ``health`` event
(which wakes the console's runner) and carried by every heartbeat in ``unhealthy``, so a lost
event is never a lost failure. The console decides what follows (the recovery policy).
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent import names
from agent.errors import AgentError
from agent.protocol import HealthSpec

log = logging.getLogger(__name__)

#: how long the failure of a guest that is gone (a panic with on_crash destroy) is still
#: reported: the console reads it as the reason of the crash
GONE_KEEP_S = 60.0
#: the monitor thread looks for due checks this often
POLL_S = 0.2


class HealthPort(Protocol):
    """What the monitor needs from the hypervisor driver."""

    def active_guests(self) -> list[str]: ...
    def health_spec(self, name: str) -> HealthSpec | None: ...
    def guest_ping(self, name: str, timeout_s: float) -> str | None: ...


def probe_tcp(host: str, port: int, timeout_s: float) -> str | None:
    """None if a TCP connection to host:port opens within the timeout, else why not."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        return f"tcp {host}:{port}: {exc.strerror or exc}"
    return None


def probe_http(host: str, port: int, path: str, timeout_s: float) -> str | None:
    """None if GET http://host:port/path answers a status below 400 within the timeout."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path, headers={"User-Agent": "haven-probe"})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return f"http {host}:{port}{path}: {getattr(exc, 'strerror', None) or exc}"
    finally:
        conn.close()
    if status >= 400:
        return f"http {host}:{port}{path}: status {status}"
    return None


def checked_spec(spec: HealthSpec) -> HealthSpec:
    """The spec with its probe address, port and path checked by the one grammar; a bad probe
    raises InvalidName (the console refuses it before it is ever written)."""
    if spec.probe:
        names.address(spec.probe_host)
        names.port(spec.probe_port, "probe port")
        if spec.probe == "http":
            names.url_path(spec.probe_path)
    return spec


@dataclass
class Failure:
    check: str
    detail: str
    at: float
    #: the guest was seen inactive since (it crashed or was destroyed)
    gone_at: float | None = None


class HealthMonitor:
    """Latches health failures per guest and runs the polled checks."""

    def __init__(
        self,
        port: HealthPort,
        report: Callable[[str, str, str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`report(guest, check, detail)` publishes a ``health`` event (called once per
        failure, never with the monitor's lock held)."""
        self._port = port
        self._report = report
        self._clock = clock
        self._lock = threading.Lock()
        self._failed: dict[str, Failure] = {}
        self._specs: dict[str, HealthSpec | None] = {}
        self._misses: dict[tuple[str, str], int] = {}
        self._due: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- events from libvirt ------------------------------------------------------------
    def on_watchdog(self, guest: str, action: str) -> None:
        spec = self.spec(guest)
        if spec is not None and spec.watchdog:
            self._fail(guest, "watchdog", f"watchdog action {action}")

    def on_panic(self, guest: str, detail: str) -> None:
        spec = self.spec(guest)
        if spec is not None and spec.panic:
            self._fail(guest, "panic", detail)

    def on_started(self, guest: str) -> None:
        """A fresh run: forget its failure, misses and cached spec (it may have been
        redefined)."""
        with self._lock:
            self._failed.pop(guest, None)
            self._specs.pop(guest, None)
            for key in [k for k in self._misses if k[0] == guest]:
                del self._misses[key]
            for key in [k for k in self._due if k[0] == guest]:
                del self._due[key]

    # --- what the heartbeat carries -----------------------------------------------------
    def unhealthy(self, active: set[str]) -> dict[str, dict[str, str]]:
        """Failed guests: those still running, and those gone less than GONE_KEEP_S ago."""
        now = self._clock()
        out: dict[str, dict[str, str]] = {}
        with self._lock:
            for guest, f in list(self._failed.items()):
                if guest in active:
                    f.gone_at = None
                elif f.gone_at is None:
                    f.gone_at = now
                elif now - f.gone_at > GONE_KEEP_S:
                    del self._failed[guest]
                    continue
                out[guest] = {"check": f.check, "detail": f.detail}
        return out

    # --- the polled checks --------------------------------------------------------------
    def spec(self, guest: str) -> HealthSpec | None:
        with self._lock:
            if guest in self._specs:
                return self._specs[guest]
        try:
            spec = self._port.health_spec(guest)
            if spec is not None:
                spec = checked_spec(spec)
        except AgentError as exc:
            log.warning("health checks of %s ignored: %s", guest, exc.message)
            spec = None
        with self._lock:
            self._specs[guest] = spec
        return spec

    def poll_once(self) -> None:
        """Run every polled check that is due (sequentially: probes time out within their
        interval, at most 2 s)."""
        try:
            active = self._port.active_guests()
        except AgentError:
            return  # libvirt away: nothing is known, nothing is failed
        now = self._clock()
        with self._lock:
            for guest in [g for g in self._specs if g not in active]:
                del self._specs[guest]
        for guest in active:
            spec = self.spec(guest)
            if spec is None or guest in self._failed:
                continue
            if spec.agent_interval_s > 0:
                self._poll(guest, "guest-agent", spec.agent_interval_s, spec.agent_misses, now)
            if spec.probe:
                self._poll(guest, "probe", spec.probe_interval_s, spec.probe_misses, now)

    def _poll(self, guest: str, check: str, interval: float, misses: int, now: float) -> None:
        key = (guest, check)
        if now < self._due.get(key, 0.0):
            return
        self._due[key] = now + interval
        timeout = min(interval, 2.0)
        error = self._run(guest, check, timeout)
        with self._lock:
            count = 0 if error is None else self._misses.get(key, 0) + 1
            self._misses[key] = count
        if error is not None:
            log.info("%s: %s check missed (%d/%d): %s", guest, check, count, misses, error)
            if count >= misses:
                self._fail(guest, check, f"{error} ({count}/{misses} misses)")

    def _run(self, guest: str, check: str, timeout: float) -> str | None:
        if check == "guest-agent":
            return self._port.guest_ping(guest, timeout)
        spec = self.spec(guest)
        assert spec is not None
        if spec.probe == "http":
            return probe_http(spec.probe_host, spec.probe_port, spec.probe_path, timeout)
        return probe_tcp(spec.probe_host, spec.probe_port, timeout)

    def _fail(self, guest: str, check: str, detail: str) -> None:
        with self._lock:
            if guest in self._failed:
                return
            self._failed[guest] = Failure(check, detail, self._clock())
        log.warning("%s failed its %s check: %s", guest, check, detail)
        self._report(guest, check, detail)

    # --- the thread ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3.0)

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.poll_once()
            except Exception:  # a bug in a check must not stop the others
                log.exception("health checks failed")
