"""Shared fixtures of the agent suite: real drivers, real processes, cleaned up afterwards."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.commands import Dispatcher, ordering_key
from agent.executor import Executor
from agent.fencing import FenceAgents
from agent.hypervisor import LibvirtHypervisor, LifecycleEvent
from agent.protocol import Command, Result
from agent.runner import SubprocessRunner
from agent.storage import LinuxStorage

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

LVM_CONF = """\
devices {
    filter = [ "a|^/dev/loop|", "r|.*|" ]
    use_devicesfile = 0
}
activation {
    udev_sync = 0
    udev_rules = 0
}
global {
    activation = 0
}
"""


def pytest_addoption(parser: pytest.Parser) -> None:
    # The agent suite runs without Django (`-p no:django`); declare pytest-django's ini key so
    # the project's shared pytest config does not warn (warnings are errors). With the plugin
    # loaded this re-declaration is harmless.
    parser.addini("DJANGO_SETTINGS_MODULE", "pytest-django's settings module (unused here)")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def redis_answers(url: str = REDIS_URL) -> bool:
    host_port = url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 6379)), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_url() -> str:
    if not redis_answers():
        pytest.skip(f"no Redis answers on {REDIS_URL} (start one: redis-server --daemonize yes)")
    return REDIS_URL


class EventLog:
    """Collects lifecycle events from libvirt's event thread."""

    def __init__(self) -> None:
        self.events: list[LifecycleEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: LifecycleEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(
        self, match: Callable[[LifecycleEvent], bool], timeout_s: float = 2.0
    ) -> LifecycleEvent:
        with self._cond:
            found: list[LifecycleEvent] = []

            def seen() -> bool:
                found[:] = [e for e in self.events if match(e)]
                return bool(found)

            assert self._cond.wait_for(seen, timeout_s), f"no matching event in {self.events}"
            return found[0]


@pytest.fixture
def events() -> EventLog:
    return EventLog()


@pytest.fixture
def test_hv(events: EventLog) -> Iterator[LibvirtHypervisor]:
    hv = LibvirtHypervisor("test:///default", events)
    assert hv.connected()
    yield hv
    hv.close()


class Harness:
    """A dispatcher + executor on real drivers, collecting published results."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.results: list[Result] = []
        self._cond = threading.Condition()
        self.executor = Executor("testhost", dispatcher.handle, self._publish, ordering_key)

    def _publish(self, result: Result) -> None:
        with self._cond:
            self.results.append(result)
            self._cond.notify_all()

    def run(self, kind: str, **args: object) -> Result:
        """Run one command synchronously through the dispatcher."""
        return self.dispatcher.handle(Command(unique("c"), kind, dict(args)))

    def submit(self, raw: object) -> None:
        self.executor.submit(raw)

    def wait_results(self, count: int, timeout_s: float = 5.0) -> list[Result]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.results) >= count, timeout_s), (
                f"only {len(self.results)} of {count} results: {self.results}"
            )
            return list(self.results)


@pytest.fixture
def harness(test_hv: LibvirtHypervisor, tmp_path: Path) -> Iterator[Harness]:
    runner = SubprocessRunner()
    dispatcher = Dispatcher(
        host="testhost",
        hypervisor=test_hv,
        storage=LinuxStorage(
            runner, fstab=tmp_path / "fstab", drain_unit="haven-drain-testhost.service"
        ),
        fencing=FenceAgents(runner, [FIXTURES, Path("/usr/sbin")]),
        libvirt_config_dir=tmp_path,
        pki_dir=tmp_path / "pki",
    )
    h = Harness(dispatcher)
    yield h
    h.executor.wait_idle(10)
    h.executor.shutdown()


def domain_xml(name: str) -> str:
    return (
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>"
    )


# Storage: loop devices and a private LVM config ---------------------------------------------


@pytest.fixture
def lvm_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if shutil.which("pvcreate") is None:
        pytest.skip("lvm2 is not installed")
    conf_dir = tmp_path / "lvm"
    conf_dir.mkdir()
    (conf_dir / "lvm.conf").write_text(LVM_CONF)
    monkeypatch.setenv("LVM_SYSTEM_DIR", str(conf_dir))
    monkeypatch.setenv("LVM_SUPPRESS_FD_WARNINGS", "1")
    return conf_dir


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """Attach sparse files as loop devices; every device attached here is detached afterwards."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("loop devices need root and losetup")
    attached: list[str] = []

    def attach(size_mib: int = 200) -> str:
        image = tmp_path / f"disk{len(attached)}.img"
        with image.open("wb") as f:
            f.truncate(size_mib * 1024 * 1024)
        done = subprocess.run(
            ["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            pytest.skip(f"no free loop device: {done.stderr.strip()}")
        attached.append(done.stdout.strip())
        return attached[-1]

    yield attach
    for dev in attached:
        subprocess.run(["losetup", "-d", dev], check=False)
