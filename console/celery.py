"""The console's Celery app: its own queue is ``console``; agents consume ``agent.<host>``."""

import os
from typing import Any

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def use_broker(url: str) -> None:
    """Point the console's app at another broker and forget connections to the old one
    (tests run consoles against brokers of their own, one after another)."""
    app.conf.broker_url = url
    state: Any = app  # the pools are private attributes the type stubs do not list
    if state._pool is not None:
        state._pool.force_close_all()
    state._pool = None
    state.amqp._producer_pool = None
