"""The console's Celery app: its own queue is ``console``; agents consume ``agent.<host>``.

It runs only Haven's own tasks (``haven.console.*``): Celery's built-in tasks are unregistered,
and a message carrying callbacks, errbacks, a chain, a chord or a group is refused before
anything runs (agent/strict.py). Agents' messages do not come through Celery at all
(console/ha/drain.py).
"""

import os
from typing import Any

from celery import Celery
from celery.signals import worker_ready
from kombu import pools

from agent.strict import StrictTask, prune
from console.core import broker

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
TASK_PREFIX = "haven.console."

app = Celery("console", task_cls=StrictTask)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
prune(app, lambda name: name.startswith(TASK_PREFIX))
broker.quiet_libraries()  # a Redis restart is a warning line, not kombu's traceback


def use_broker(url: str) -> None:
    """Point the console's app at another broker and forget connections to the old one
    (tests run consoles against brokers of their own, one after another)."""
    app.conf.broker_url = url
    state: Any = app  # the pools are private attributes the type stubs do not list
    if state._pool is not None:
        state._pool.force_close_all()
    state._pool = None
    state.amqp._producer_pool = None
    # kombu keeps producer pools per broker URL: one closed above must not be handed out again
    # when the same URL comes back.
    pools.reset()  # type: ignore[attr-defined]


@worker_ready.connect
def _agent_users(**_kwargs: Any) -> None:
    """Re-create any agent's Redis user that Redis lost (console/ha/credentials.py)."""
    import logging

    from console.ha import credentials

    try:
        created = credentials.ensure_users()
    except Exception as exc:  # Redis or the database away: the drainer retries every 10 s
        logging.getLogger("haven.credentials").warning("agents' Redis users unchecked: %s", exc)
        return
    if created:
        logging.getLogger("haven.credentials").warning("re-created Redis users of %s", created)
