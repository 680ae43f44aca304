"""Assembly: the Celery app consuming `agent.<host>`, the drivers, and the agent's threads.

Threads in one agent process:
- Celery's consumer (main thread, solo pool): receives `haven.agent.execute` and only hands the
  command to the executor, so the broker connection is never busy with work;
- the command pool (`cmd-*`): runs commands, ordered per guest;
- libvirt's event loop: turns lifecycle changes into events;
- the heartbeat thread;
- the publisher thread: the only one that sends to the console (RPUSH onto `haven:in:<host>`).

The Celery app runs only `haven.agent.execute` (agent/strict.py): Celery's built-in tasks are
unregistered and a message carrying callbacks, errbacks, a chain, a chord or a group is refused.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Queue

from agent.cluster_stack import ClusterStack
from agent.commands import Dispatcher, ordering_key
from agent.executor import Executor
from agent.fencing import DEFAULT_SEARCH_PATH, FenceAgents
from agent.files import replace_file
from agent.health import HealthMonitor
from agent.heartbeat import HeartbeatThread
from agent.hypervisor import LibvirtHypervisor, LifecycleEvent
from agent.protocol import EXECUTE_TASK, Command, Event, ProtocolError, agent_queue, broker_keys
from agent.publisher import Publisher, RedisSender, Sender
from agent.reconnect import CONSUMER as RECONNECTING_CONSUMER
from agent.runner import SubprocessRunner
from agent.sealing import open_sealed
from agent.shutdown import unit_name as drain_unit_name
from agent.storage import LinuxStorage
from agent.strict import StrictTask, prune

BROKER_ENV, SEAL_KEY_ENV = "HAVEN_AGENT_BROKER", "HAVEN_AGENT_SEAL_KEY"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    broker: str
    host: str
    libvirt_uri: str = "qemu:///system"
    heartbeat_interval_s: float = 1.0
    workers: int = 4
    fence_path: tuple[Path, ...] = DEFAULT_SEARCH_PATH
    fstab: Path = Path("/etc/fstab")
    libvirt_config_dir: Path = Path("/etc/libvirt")
    pki_dir: Path = Path("/etc/pki")
    log_level: str = "INFO"
    seal_key: str | None = field(default=None, repr=False)  # opens sealed arguments
    broker_file: Path | None = None  # where the broker URL and the sealing key came from
    #: report this much memory instead of the machine's (simulated; the lab's hosts share one
    #: machine): $HAVEN_SIMULATED_MEMORY_MIB
    memory_mib: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def unacked_keys(host: str) -> dict[str, str]:
    """kombu's ack-emulation keys for one agent (its Redis ACL names each of them exactly)."""
    keys = broker_keys(host)
    return {f"{role}_key": keys[role] for role in ("unacked", "unacked_index", "unacked_mutex")}


def make_celery(settings: Settings) -> Celery:
    """A Celery app that consumes only this host's queue and retries the broker forever."""
    queue = agent_queue(settings.host)
    app = Celery(
        f"haven-agent-{settings.host}",
        broker=settings.broker,
        set_as_current=False,
        task_cls=StrictTask,
    )
    prune(app, lambda name: name == EXECUTE_TASK)
    app.conf.update(
        task_queues=[Queue(queue, routing_key=queue)],
        task_default_queue=queue,
        task_ignore_result=True,
        worker_prefetch_multiplier=16,
        worker_consumer=RECONNECTING_CONSUMER,  # back within ~1 s of the broker's return
        worker_enable_remote_control=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={
            "socket_connect_timeout": 2,
            # One list per queue, no `agent.HOST\x06\x16N` priority lists: the agent's Redis
            # user may read exactly `agent.HOST` (console/ha/broker.py).
            "priority_steps": [0],
            # Unacked messages in keys of this host's own, not kombu's shared `unacked`: an
            # agent's Redis user may touch only its own keys (console/bootstrap/ssh.py).
            **unacked_keys(settings.host),
        },
        broker_heartbeat=0,
    )
    return app


class Agent:
    """One host's agent: drivers, executor, heartbeat and publisher, wired together."""

    def __init__(
        self, settings: Settings, app: Celery | None = None, sender: Sender | None = None
    ) -> None:
        self.settings = settings
        self._seal_keys = [settings.seal_key] if settings.seal_key else []
        self.app = app or make_celery(settings)
        self.publisher = Publisher(sender or RedisSender(settings.broker, settings.host))
        self._event_seq = itertools.count(1)
        self.hypervisor = LibvirtHypervisor(
            settings.libvirt_uri,
            self._on_lifecycle,
            on_watchdog=self._on_watchdog,
            memory_mib=settings.memory_mib,
        )
        self.health = HealthMonitor(self.hypervisor, self._on_health)
        runner = SubprocessRunner()
        storage = LinuxStorage(
            runner, fstab=settings.fstab, drain_unit=drain_unit_name(settings.host)
        )
        self.dispatcher = Dispatcher(
            host=settings.host,
            hypervisor=self.hypervisor,
            storage=storage,
            fencing=FenceAgents(runner, settings.fence_path),
            libvirt_config_dir=settings.libvirt_config_dir,
            pki_dir=settings.pki_dir,
            rotate=self._rotate if settings.broker_file is not None else None,
        )
        self.executor = Executor(
            settings.host,
            self.dispatcher.handle,
            self.publisher.publish,
            ordering_key,
            workers=settings.workers,
            unseal=self._unseal,
        )
        self.heartbeat = HeartbeatThread(
            settings.host,
            self.hypervisor,
            self.publisher.publish,
            settings.heartbeat_interval_s,
            cluster_stack=ClusterStack(runner),
            health=self.health,
            shared_mounts=storage.shared_mounts,
        )
        self._register_task()

    def _register_task(self) -> None:
        executor = self.executor

        @self.app.task(name=EXECUTE_TASK, ignore_result=True)
        def execute(command: object = None, *_args: object, **_kwargs: object) -> None:
            executor.submit(command)

    def _unseal(self, cmd: Command) -> Command:
        """Open sealed arguments with this agent's key (after a rotation: the new one first)."""
        error: ProtocolError | None = None
        keys: list[str | None] = [*self._seal_keys] or [None]
        for key in keys:
            try:
                return open_sealed(key, self.settings.host, cmd)
            except ProtocolError as exc:
                error = exc
        assert error is not None
        raise error

    def _rotate(self, password: str, seal_key: str) -> dict[str, Any]:
        """New credentials into the broker file (0600, replaced atomically), then a restart:
        the supervisor (systemd, or the bootstrap's loop) starts the agent again with them."""
        path = self.settings.broker_file
        assert path is not None
        lines, has_key = [], False
        for line in path.read_text().splitlines():
            if line.startswith(f"{BROKER_ENV}="):
                parts = urllib.parse.urlsplit(line.split("=", 1)[1].strip())
                netloc = f"{parts.username}:{urllib.parse.quote(password)}@{parts.hostname}"
                netloc += f":{parts.port}" if parts.port else ""
                url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
                line = f"{BROKER_ENV}={url}"
            elif line.startswith(f"{SEAL_KEY_ENV}="):
                line, has_key = f"{SEAL_KEY_ENV}={seal_key}", True
            lines.append(line)
        if not has_key:
            lines.append(f"{SEAL_KEY_ENV}={seal_key}")
        replace_file(path, "\n".join(lines) + "\n", 0o600)
        self._seal_keys.insert(0, seal_key)
        log.warning("new broker credentials written to %s; restarting in a second", path)
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return {"file": str(path), "restarting": True}

    def _on_lifecycle(self, ev: LifecycleEvent) -> None:
        event = Event(
            host=self.settings.host,
            event="lifecycle",
            guest=ev.guest,
            uuid=ev.uuid,
            state=ev.state,
            detail=ev.detail,
            seq=next(self._event_seq),
        )
        log.info("event %s: %s (%s)", ev.guest, ev.state, ev.detail)
        self.publisher.publish(event)
        if ev.state == "started":
            self.health.on_started(ev.guest)
        elif ev.state == "panicked":
            self.health.on_panic(ev.guest, ev.detail)

    def _on_watchdog(self, guest: str, action: str) -> None:
        self.health.on_watchdog(guest, action)

    def _on_health(self, guest: str, check: str, detail: str) -> None:
        """A guest failed a health check: tell the console at once (the heartbeats repeat
        it until the guest starts again)."""
        self.publisher.publish(
            Event(
                host=self.settings.host,
                event="health",
                guest=guest,
                uuid="",
                state=check,
                detail=detail,
                seq=next(self._event_seq),
            )
        )

    def start_background(self) -> None:
        """Start everything but the Celery consumer."""
        self.publisher.start()
        self.hypervisor.connected()  # first connection now, so events flow from the start
        self.heartbeat.start()
        self.health.start()

    def run(self) -> None:
        """Run until stopped (SIGTERM/SIGINT): background threads, then the consumer."""
        self.start_background()
        queue = agent_queue(self.settings.host)
        log.info("agent %s consuming %s", self.settings.host, queue)
        worker_class: Any = self.app.Worker  # celery-types does not describe its options
        worker = worker_class(
            queues=[queue],
            pool="solo",
            concurrency=1,
            hostname=f"agent@{self.settings.host}",
            without_gossip=True,
            without_mingle=True,
            without_heartbeat=True,
            loglevel=self.settings.log_level,
            quiet=True,
        )
        try:
            worker.start()
        finally:
            self.stop()

    def stop(self) -> None:
        self.health.stop()
        self.heartbeat.stop()
        self.executor.wait_idle(5.0)
        self.executor.shutdown()
        self.publisher.stop()
        self.hypervisor.close()
