"""What agents send (heartbeats, lifecycle events, results) and where it goes.

Heartbeats and events go to the Redis store (fast, batched into the database by the runner);
results update their job in the database. A lifecycle event that may need recovery, a fence
result and a failed action wake the runner at once; other results wait for its next tick.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings

from agent.protocol import PROTOCOL_VERSION
from console.clusters.models import Host
from console.jobs import services as jobs
from console.jobs.models import FINISHED_STATUSES, JobStatus
from console.runtime.store import Store, now

log = logging.getLogger("haven.ingest")
WAKING_STATES = frozenset({"stopped", "crashed", "started", "migrated", "undefined"})


def handle(message: Any, store: Store, received: float | None = None) -> int | None:
    """Take one message; return the cluster id whose runner should wake, or None."""
    if not isinstance(message, dict) or message.get("v") != PROTOCOL_VERSION:
        log.warning("ignored a message that is not protocol v%s", PROTOCOL_VERSION)
        return None
    host_name, kind = str(message.get("host", "")), message.get("kind")
    received = now() if received is None else received
    if kind == "result":
        step = jobs.apply_result(message)
        if step is None:
            return None
        job = step.job
        job.refresh_from_db(fields=["status", "action_id"])
        # The engine hears of every finished action at its next tick (≤ 1 s). It is woken at
        # once only where recovery waits on the outcome: a fence, or an action that failed.
        if (
            job.action_id
            and job.status in FINISHED_STATUSES
            and (job.kind == "fence" or job.status != JobStatus.SUCCEEDED)
        ):
            return job.cluster_id
        return None
    cluster_id = Host.objects.filter(name=host_name).values_list("cluster_id", flat=True).first()
    if cluster_id is None:
        if host_name != settings.HAVEN_CONSOLE_AGENT:  # the console's own agent is no host
            log.warning("message from unknown host %r ignored", host_name)
        return None
    if kind == "heartbeat":
        if message.get("guests") is None:
            # libvirt unreachable: what runs is unknown, so this is no proof of life
            return None
        store.put_heartbeat(host_name, message, received)
        return None
    if kind == "event" and message.get("event") == "lifecycle":
        guest, state = str(message.get("guest", "")), str(message.get("state", ""))
        store.put_lifecycle(host_name, guest, state, received)
        return cluster_id if state in WAKING_STATES else None
    return None
