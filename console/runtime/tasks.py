"""Celery tasks of the console (queue ``console``); thin: the work is in ingest and runner."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from agent.protocol import RECEIVE_TASK
from console.runtime import ingest, runner
from console.runtime.store import Store

_store: Store | None = None


def store() -> Store:
    global _store
    if _store is None:
        _store = Store()
    return _store


@shared_task(name=RECEIVE_TASK, ignore_result=True)
def receive(message: dict[str, Any]) -> None:
    """Every agent message lands here; recovery starts in this very task when needed."""
    cluster_id = ingest.handle(message, store())
    if cluster_id is not None:
        runner.run(cluster_id, store())


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
