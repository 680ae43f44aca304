"""The heartbeat: every interval, what runs here and how much memory is free.

Runs in its own thread and publishes straight to the publisher, never through the command pool.
It also drives libvirt reconnection: each beat asks the hypervisor whether it is connected.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from agent import __version__
from agent.cluster_stack import ClusterStack
from agent.errors import AgentError
from agent.health import HealthMonitor
from agent.hypervisor import Hypervisor
from agent.protocol import Heartbeat

log = logging.getLogger(__name__)
# This agent process's id: heartbeat ``seq`` counts from 1 within it (the console tells a
# restarted agent from lost heartbeats by it).
BOOT_ID = uuid.uuid4().hex[:16]


def build_heartbeat(
    host: str,
    hypervisor: Hypervisor,
    seq: int,
    interval_s: float,
    boot: str = BOOT_ID,
    cluster_stack: ClusterStack | None = None,
    health: HealthMonitor | None = None,
    shared_mounts: Callable[[], list[str] | None] | None = None,
) -> Heartbeat:
    cluster = cluster_stack.membership() if cluster_stack is not None else None
    mounts = shared_mounts() if shared_mounts is not None else None
    try:
        facts = hypervisor.host_facts()
        guests = hypervisor.list_guests(active_only=True)
    except AgentError:
        return Heartbeat(
            host,
            __version__,
            seq,
            interval_s,
            False,
            None,
            None,
            None,
            None,
            None,
            boot=boot,
            cluster=cluster,
            shared_mounts=mounts,
        )
    return Heartbeat(
        host=host,
        agent_version=__version__,
        seq=seq,
        interval_s=interval_s,
        libvirt_connected=True,
        host_uuid=facts.host_uuid,
        cpus=facts.cpus,
        memory_total_mib=facts.memory_total_mib,
        memory_free_mib=facts.memory_free_mib,
        guests=guests,
        boot=boot,
        cluster=cluster,
        unhealthy=health.unhealthy({g.name for g in guests}) if health is not None else {},
        shared_mounts=mounts,
    )


class HeartbeatThread:
    def __init__(
        self,
        host: str,
        hypervisor: Hypervisor,
        publish: Callable[[Heartbeat], None],
        interval_s: float = 1.0,
        cluster_stack: ClusterStack | None = None,
        health: HealthMonitor | None = None,
        shared_mounts: Callable[[], list[str] | None] | None = None,
    ) -> None:
        self._cluster_stack = cluster_stack
        self._shared_mounts = shared_mounts
        self._health = health
        self._host = host
        self._hypervisor = hypervisor
        self._publish = publish
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def _loop(self) -> None:
        seq = 0
        next_beat = time.monotonic()
        while not self._stop.is_set():
            seq += 1
            try:
                self._publish(
                    build_heartbeat(
                        self._host,
                        self._hypervisor,
                        seq,
                        self._interval_s,
                        cluster_stack=self._cluster_stack,
                        health=self._health,
                        shared_mounts=self._shared_mounts,
                    )
                )
            except Exception:  # a heartbeat bug must not stop the heartbeats
                log.exception("heartbeat %d failed", seq)
            next_beat += self._interval_s
            self._stop.wait(max(0.0, next_beat - time.monotonic()))
