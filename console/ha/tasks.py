"""Celery tasks of the console (queue ``console``); thin: the work is in the runner.

Agents never send Celery tasks: their messages come in through their own inbound lists and the
ingest drainer (console/ha/drain.py); their Redis users cannot write the ``console`` queue.
"""

from __future__ import annotations

from celery import shared_task

from console.ha import panel, runner
from console.ha.store import RedisStore, Store

_store: Store | None = None
#: each store this module made, with the broker URL it was made for (kept, so no id is reused);
#: a store a test put in place is not among them
_made: dict[int, tuple[Store, str]] = {}


def store() -> Store:
    """The process's store, made anew when the broker setting changed (a test or a console
    pointed at another Redis must never read the heartbeats of the old one); a store a test
    put in `_store` is used as it is."""
    global _store
    from django.conf import settings

    made = _made.get(id(_store)) if _store is not None else None
    if _store is None or (made is not None and made[1] != settings.REDIS_URL):
        _store = RedisStore()
        _made[id(_store)] = (_store, settings.REDIS_URL)
    return _store


@shared_task(name="haven.console.tick", ignore_result=True)
def tick() -> None:
    """The runner's heartbeat (Celery beat, every second); then the policy panels someone
    watches are computed again for the new tick (console/ha/panel.py)."""
    runner.run_all(store())
    panel.refresh_watched(store())


@shared_task(name="haven.console.wake", ignore_result=True)
def wake(cluster_id: int) -> None:
    """Run one cluster's engine now (after a person's command; the drainer's wakes: a
    lifecycle event, a fence result, a failed action)."""
    from console.clusters.models import Cluster

    if Cluster.objects.filter(pk=cluster_id).exists():
        runner.run(cluster_id, store())
