"""A real console (Celery worker + beat + ingest drainer on the pytest database) and a Redis
on the lab bridge, driving lab hosts whose agents the console's own SSH bootstrap installed.

Shared by tests/console/test_bootstrap.py and tests/lab/ (``lab_cluster``: the module-wide
cluster of test_e2e.py, test_day_two.py and test_health_lab.py; ``watch_split_brain``: their
per-test watcher); the pattern is the one of tests/console/test_live.py.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import libvirt
import redis

ROOT = Path(__file__).resolve().parents[2]
LAB_DIR = ROOT / "deploy" / "lab"
if str(LAB_DIR) not in sys.path:
    sys.path.insert(0, str(LAB_DIR))

import haven_lab  # noqa: E402
import labkit  # noqa: E402

HOSTS = ("et-virt05", "et-virt06", "et-virt07")
TEST_ROOT = ROOT / "var" / "lab-test"
REDIS_PORT = 6390  # the lab's own Redis: bound to 127.0.0.1 and the bridge


def _quiet_libvirt(_ctx: object, _err: object) -> None:
    """Errors arrive as exceptions; keep libvirt from also printing them."""


libvirt.registerErrorHandler(_quiet_libvirt, None)


class LabRedis:
    """redis-server on 127.0.0.1 and 10.88.0.254 (LAB.md "Celery + Redis across namespaces")."""

    def __init__(
        self, root: Path, port: int = REDIS_PORT, bind: str = haven_lab.BRIDGE_ADDRESS
    ) -> None:
        self.port, self.dir, self.bind = port, root / "redis", bind
        self.proc: subprocess.Popen[bytes] | None = None
        # The default user (the console's) has a password: reachable from the lab hosts,
        # Redis would otherwise let any of them in as the console (and refuse in protected mode).
        self.password = secrets.token_hex(16)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def agent_url(self) -> str:
        return f"redis://{self.bind}:{self.port}/0"

    def start(self, fresh: bool = True) -> None:
        """Start the server; `fresh` drops what an earlier run left in its append-only file
        (`restart()` keeps it, as a real Redis restart would)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            shutil.rmtree(self.dir / "appendonlydir", ignore_errors=True)
        pidfile = self.dir / "redis.pid"
        if pidfile.exists():  # an interrupted earlier run's server
            pid = int(pidfile.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline")
            if cmdline.exists() and b"redis-server" in cmdline.read_bytes():
                os.kill(pid, signal.SIGKILL)
                haven_lab.wait_for(lambda: not cmdline.exists(), 5, "the old lab redis to stop")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                f"127.0.0.1 {self.bind}",
                "--save",
                "",
                "--appendonly",  # as deploy/start-services: a restart keeps the queues
                "yes",
                "--appendfsync",
                "everysec",
                "--requirepass",
                self.password,
                "--dir",
                str(self.dir),
                "--pidfile",
                str(self.dir / "redis.pid"),
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            start_new_session=True,
        )
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        haven_lab.wait_for(lambda: _pings(client), 10, "the lab's redis")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        """kill -9 and start again on the same append-only file."""
        self.stop()
        self.start(fresh=False)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def db_url(settings: Any) -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


class Console:
    """The console's processes on the test database: the Celery worker and beat, and the ingest
    drainer (agents' messages). The one place that knows which console processes exist."""

    #: the worker's pool; deploy/quickstart runs the default prefork pool (`--concurrency 1`)
    worker_pool: tuple[str, ...] = ("--pool", "threads", "-c", "6")
    #: how many workers: "worker", then "worker-2", ... (deploy/quickstart runs two)
    workers = 1

    def __init__(self, broker: str, database: str, logs: Path, **env: str) -> None:
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "REDIS_URL": broker,
            "DATABASE_URL": database,
            "HAVEN_LOG_LEVEL": "INFO",
            "PYTHONPATH": str(ROOT),
            **env,
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _start(self, name: str, argv: list[str]) -> None:
        with open(self.logs / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self) -> None:
        celery = [sys.executable, "-m", "celery", "-A", "console"]
        for n in range(1, self.workers + 1):
            self._start(
                "worker" if n == 1 else f"worker-{n}",
                [
                    *celery,
                    "worker",
                    "-Q",
                    "console",
                    *self.worker_pool,
                    "-n",
                    f"console-{uuid.uuid4().hex[:6]}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "-l",
                    "INFO",
                ],
            )
        self._start(
            "beat", [*celery, "beat", "-s", str(self.logs / "beat-schedule"), "-l", "WARNING"]
        )
        self._start("ingest", [sys.executable, "manage.py", "haven_ingest"])

    def stop(self) -> None:
        for proc in self.procs.values():
            with _suppress():
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.procs.clear()

    def log_text(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')}"
            for p in sorted(self.logs.glob("*.log"))
        )


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], ProcessLookupError)  # type: ignore[arg-type]


def agent_logs() -> str:
    return "\n".join(
        f"--- {p}\n{p.read_text(errors='replace')}"
        for p in sorted(Path("/var/log").glob("haven-agent-*.log"))
    )


def reset_agent_logs(names: tuple[str, ...] = HOSTS) -> None:
    for name in names:
        Path(f"/var/log/haven-agent-{name}.log").unlink(missing_ok=True)


def unix_uri(host: haven_lab.LabHost) -> str:
    """The host's libvirtd through its UNIX socket: works while its cable is cut."""
    return f"qemu+unix:///system?socket={host.dir}/run/libvirt/libvirt-sock"


def running_guests(uri: str) -> set[str] | None:
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return None
    try:
        return {d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
    except libvirt.libvirtError:
        return None
    finally:
        with _suppress_libvirt():
            conn.close()


class RunningGuests:
    """Each lab host's running guests, asked of its libvirtd over its UNIX socket on a kept
    connection. Running, not merely active: the destination of a live migration holds the
    guest paused until the switch-over, and that is no second copy. None while it does not
    answer."""

    def __init__(self, uris: dict[str, str]) -> None:
        self.uris = uris
        self._conns: dict[str, libvirt.virConnect] = {}

    def of(self, host: str) -> set[str] | None:
        conn = self._conns.get(host)
        try:
            if conn is None:
                if not Path(self.uris[host].split("socket=", 1)[1]).exists():
                    return None
                conn = self._conns[host] = libvirt.open(self.uris[host])
            return {
                d.name()
                for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                if d.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            }
        except libvirt.libvirtError:
            self._conns.pop(host, None)
            return None

    def close(self) -> None:
        for conn in self._conns.values():
            with _suppress_libvirt():
                conn.close()
        self._conns.clear()


class _suppress_libvirt:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], libvirt.libvirtError)  # type: ignore[arg-type]


class SplitBrainWatcher:
    """Polls every host's libvirtd every 100 ms; remembers any guest seen running on two hosts
    at once (paused on a live migration's destination does not count)."""

    def __init__(self, lab: haven_lab.Lab, interval: float = 0.1) -> None:
        self.uris = {h.name: unix_uri(h) for h in lab.hosts()}
        self.guests = RunningGuests(self.uris)
        self.interval = interval
        self.violations: list[str] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="split-brain-watcher", daemon=True)

    def _list(self, name: str) -> set[str]:
        return self.guests.of(name) or set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            seen: dict[str, list[str]] = {}
            for name in self.uris:
                for guest in self._list(name):
                    seen.setdefault(guest, []).append(name)
            for guest, hosts in seen.items():
                if len(hosts) < 2:
                    continue
                # The hosts are read one after another: a live migration's switch-over between
                # two reads shows the guest on both. Read them again, the last first: a second
                # copy still runs on each; a migrated guest is gone from (paused on) its source.
                still = [h for h in reversed(hosts) if guest in self._list(h)]
                if len(still) > 1:
                    self.violations.append(f"{time.strftime('%T')} {guest} runs on {still}")
            self.polls += 1
            self._stop.wait(self.interval)

    def start(self) -> SplitBrainWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.guests.close()


def wait(what: str, check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """``check``'s first true value; a test failure naming `what` after ``timeout``."""
    return labkit.wait_for(check, timeout, what, interval, AssertionError)


def fresh_lab(names: tuple[str, ...] = HOSTS) -> haven_lab.Lab:
    """The article's three hosts (or ``names``) built anew under TEST_ROOT (whatever an
    interrupted run left is destroyed first); skips the test where this machine cannot create
    namespaces."""
    import pytest

    reason = haven_lab.namespace_support()
    if reason is not None:
        pytest.skip(f"lab hosts need network namespaces: {reason}")
    lab = haven_lab.Lab(TEST_ROOT)
    lab.destroy()
    try:
        lab.create(names)
    except haven_lab.LabError as exc:
        lab.destroy()
        pytest.fail(f"lab could not be created: {exc}")
    reset_agent_logs(names)
    return lab


class _Watched(Protocol):
    lab: haven_lab.Lab
    watcher: SplitBrainWatcher | None


C = TypeVar("C")
W = TypeVar("W", bound=_Watched)

#: what the console processes of the lab tests run with
LAB_OVERRIDES = {
    "HAVEN_FENCE_ACTION": "off",  # the tests power hosts back on themselves
    "HAVEN_STOP_TIMEOUT_S": "3",  # the tick guest ignores ACPI
}


def lab_cluster(
    django_db_blocker: Any,
    make: Callable[[haven_lab.Lab, Any, Console], C],
    *,
    names: tuple[str, ...] = HOSTS,
    admin: str = "lab-admin",
) -> Iterator[C]:
    """The body of a module-wide ``cluster`` fixture: lab hosts ``names`` built anew, the tick
    guest's kernel, a password-protected Redis on the bridge, the console's processes on the
    test database, an admin's API client; ``make(lab, api, console)`` is what the tests get
    (with ``kernel`` and ``redis`` set on it). Nothing is bootstrapped yet. Afterwards
    everything is stopped, the lab destroyed, the settings restored and the database
    flushed."""
    import article

    lab = fresh_lab(names)
    kernel = article.build_guest_kernel(lab.root)
    with console_on_lab(lab, django_db_blocker, admin, LAB_OVERRIDES) as (lab_redis, console, api):
        cluster = make(lab, api, console)
        cluster.kernel = kernel  # type: ignore[attr-defined]
        cluster.redis = lab_redis  # type: ignore[attr-defined]
        yield cluster


def watch_split_brain(cluster: W, django_db_blocker: Any) -> Iterator[None]:
    """The body of the lab tests' autouse fixture: database access, and a watcher that fails
    the test if a guest ran on two hosts during it."""
    with django_db_blocker.unblock():
        watcher = SplitBrainWatcher(cluster.lab).start()
        cluster.watcher = watcher
        try:
            yield
        finally:
            watcher.stop()
        assert watcher.polls > 0
        assert not watcher.violations, f"a guest ran on two hosts: {watcher.violations[:5]}"


def ensure_test_database() -> Any:
    """pytest-django creates the test database only when a collected test is marked django_db;
    these tests share one cluster across tests (no per-test flush), so when run alone they
    create it themselves. Never run against the real database."""
    from django.conf import settings
    from django.db import connection
    from django.test.utils import setup_databases

    test_name = settings.DATABASES["default"].get("TEST", {}).get("NAME")
    if connection.settings_dict["NAME"] == test_name or "test" in str(
        connection.settings_dict["NAME"]
    ):
        return None
    config = setup_databases(verbosity=0, interactive=False, aliases={"default"})  # type: ignore[arg-type]
    assert "test" in str(connection.settings_dict["NAME"]), "refusing the real database"
    return config


#: the settings a console on the lab's Redis changes in this process, put back afterwards
LAB_SETTINGS = ("REDIS_URL", "CELERY_BROKER_URL", "HAVEN_AGENT_BROKER_URL", "HAVEN_WAKE_ON_COMMAND")


@contextmanager
def console_on_lab(
    lab: haven_lab.Lab, django_db_blocker: Any, admin: str, overrides: dict[str, str]
) -> Iterator[tuple[LabRedis, Console, Any]]:
    """A real console (``Console``, with ``overrides`` in its environment) on a Redis of the lab
    (``LabRedis``), this process's settings pointed at that Redis meanwhile, and an API client
    logged in as a new superuser ``admin``; yields (redis, console, api) with database access.
    Afterwards the console stops, the lab is destroyed, the Redis stops, the settings come
    back and the database is emptied (the test database is removed if this made it)."""
    from django.conf import settings
    from rest_framework.test import APIClient

    from console.celery import use_broker

    lab_redis = LabRedis(lab.root)
    lab_redis.start()
    saved = {k: getattr(settings, k, None) for k in LAB_SETTINGS}
    settings.REDIS_URL = settings.CELERY_BROKER_URL = lab_redis.url
    settings.HAVEN_AGENT_BROKER_URL = lab_redis.agent_url
    settings.HAVEN_WAKE_ON_COMMAND = True
    use_broker(lab_redis.url)
    with django_db_blocker.unblock():
        own_db = ensure_test_database()
        console = Console(lab_redis.url, db_url(settings), lab.root / "console-logs", **overrides)
        console.start()
        from django.contrib.auth.models import User

        api = APIClient()
        api.force_authenticate(User.objects.create_superuser(admin, password="pw-for-tests-only"))
        try:
            yield lab_redis, console, api
        finally:
            console.stop()
            lab.destroy()
            lab_redis.stop()
            for key, value in saved.items():
                setattr(settings, key, value)
            use_broker(settings.REDIS_URL)
            from django.core.management import call_command

            call_command("flush", interactive=False, verbosity=0)
            if own_db is not None:
                from django.test.utils import teardown_databases

                teardown_databases(own_db, verbosity=0)
