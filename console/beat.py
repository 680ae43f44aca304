"""Celery beat's scheduler for the console (``CELERY_BEAT_SCHEDULER``): celery's own
``PersistentScheduler``, except that a due task it cannot send because Redis is away or
restarting is one warning line with the cause, not celery's "Message Error" with its chained
tracebacks (``Scheduler.apply_entry`` logs every failure that way; no setting turns it off).
Nothing else changes: the entry was already advanced, beat sends the next tick a second later
once Redis answers again (its producer reconnects), and the ingest drainer's backup ticker
covers the gap (console/ha/drain.py). Any other failure is celery's to report."""

from __future__ import annotations

import logging
from typing import Any

from celery.beat import PersistentScheduler, SchedulingError

from console.core import broker

log = logging.getLogger("haven.beat")


class Scheduler(PersistentScheduler):
    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        base: Any = super()  # celery-types does not list Scheduler.apply_async
        try:
            return base.apply_async(entry, producer=producer, advance=advance, **kwargs)
        except SchedulingError as exc:  # celery wraps what the publish raised
            why = broker.unavailable(exc.__cause__ or exc.__context__ or exc)
            if not why:
                raise
            log.warning("could not send %s: %s", entry.name, why)
            return None
