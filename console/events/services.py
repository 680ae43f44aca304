"""Writing the event log. Every action (who, what, when, result) lands here."""

from __future__ import annotations

import logging
from typing import Any

from django.db import models
from django.db.models.signals import post_save

from console.events.models import Event, EventResult, Severity

log = logging.getLogger("haven.events")
DEFAULT_SEVERITY: dict[str, str] = {
    EventResult.FAILED: Severity.ERROR,
    EventResult.REFUSED: Severity.WARNING,
}


def _event(
    *,
    actor: str,
    verb: str,
    obj: models.Model | None = None,
    object_type: str = "",
    object_name: str = "",
    cluster: Any = None,
    result: str = EventResult.OK,
    message: str = "",
    data: dict[str, Any] | None = None,
    severity: str | None = None,
) -> Event:
    if severity is None:
        severity = DEFAULT_SEVERITY.get(result, Severity.INFO)
    if obj is not None:
        object_type = object_type or (obj._meta.model_name or "")
        object_name = object_name or str(obj)
    return Event(
        actor=actor[:150],
        verb=verb,
        object_type=object_type,
        object_name=object_name[:255],
        cluster=cluster,
        result=result,
        severity=severity,
        message=message,
        data=data or {},
    )


def record_many(entries: list[dict[str, Any]]) -> list[Event]:
    """Append many events (each given as `record`'s keyword arguments) in one INSERT per
    batch: a mass failure's thousands of state changes in one tick. Each is then announced as
    saved (post_save, so alerts see every one) and logged, as `record` does."""
    events = Event.objects.bulk_create([_event(**e) for e in entries], batch_size=500)
    for event in events:
        post_save.send(Event, instance=event, created=True, raw=False, using="default",
                       update_fields=None)  # fmt: skip
        log.info(
            "%s %s %s %s: %s %s", event.actor, event.verb, event.object_type,
            event.object_name, event.result, event.message,
        )  # fmt: skip
    return events


def record(
    *,
    actor: str,
    verb: str,
    obj: models.Model | None = None,
    object_type: str = "",
    object_name: str = "",
    cluster: Any = None,
    result: str = EventResult.OK,
    message: str = "",
    data: dict[str, Any] | None = None,
    severity: str | None = None,
) -> Event:
    """Append one event. Callers never put secrets in ``message`` or ``data``.

    ``severity`` defaults from the result: failed is an error, refused a warning, else info.
    """
    event = _event(
        actor=actor,
        verb=verb,
        obj=obj,
        object_type=object_type,
        object_name=object_name,
        cluster=cluster,
        result=result,
        message=message,
        data=data,
        severity=severity,
    )
    event.save()
    log.info(
        "%s %s %s %s: %s %s", event.actor, event.verb, event.object_type, event.object_name,
        event.result, event.message,
    )  # fmt: skip
    return event
