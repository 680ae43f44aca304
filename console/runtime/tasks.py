"""Celery tasks of the console (queue ``console``); thin: the work is in the runner.

Agents never send Celery tasks: their messages come in through their own inbound lists and the
ingest drainer (console/runtime/drain.py); their Redis users cannot write the ``console`` queue.
"""

from __future__ import annotations

from celery import shared_task

from console.runtime import runner
from console.runtime.store import Store

_store: Store | None = None


def store() -> Store:
    global _store
    if _store is None:
        _store = Store()
    return _store


@shared_task(name="haven.console.tick", ignore_result=True)
def tick() -> None:
    """The runner's heartbeat (Celery beat, every second)."""
    runner.run_all(store())


@shared_task(name="haven.console.wake", ignore_result=True)
def wake(cluster_id: int) -> None:
    """Run one cluster's engine now (after a person's command)."""
    from console.clusters.models import Cluster

    if Cluster.objects.filter(pk=cluster_id).exists():
        runner.run(cluster_id, store())
