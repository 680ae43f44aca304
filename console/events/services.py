"""Writing the event log. Every action (who, what, when, result) lands here."""

from __future__ import annotations

import logging
from typing import Any, Required, TypedDict, Unpack

from django.db import models
from django.db.models.signals import post_save

from console.events.models import Event, EventResult, Severity

log = logging.getLogger("haven.events")
DEFAULT_SEVERITY: dict[str, str] = {
    EventResult.FAILED: Severity.ERROR,
    EventResult.REFUSED: Severity.WARNING,
}


class EventFields(TypedDict, total=False):
    """What one event says (``record``'s keyword arguments): who did what (``actor``, ``verb``),
    to what (``obj``, or ``object_type`` and ``object_name``), where (``cluster``), how it
    ended (``result``, default ok). Callers never put secrets in ``message`` or ``data``.
    ``severity`` defaults from the result: failed is an error, refused a warning, else info."""

    actor: Required[str]
    verb: Required[str]
    obj: models.Model | None
    object_type: str
    object_name: str
    cluster: Any
    result: str
    message: str
    data: dict[str, Any] | None
    severity: str | None


def _event(fields: EventFields) -> Event:
    obj = fields.get("obj")
    result = fields.get("result", EventResult.OK)
    object_type, object_name = fields.get("object_type", ""), fields.get("object_name", "")
    if obj is not None:
        object_type = object_type or (obj._meta.model_name or "")
        object_name = object_name or str(obj)
    return Event(
        actor=fields["actor"][:150],
        verb=fields["verb"],
        object_type=object_type,
        object_name=object_name[:255],
        cluster=fields.get("cluster"),
        result=result,
        severity=fields.get("severity") or DEFAULT_SEVERITY.get(result, Severity.INFO),
        message=fields.get("message", ""),
        data=fields.get("data") or {},
    )


def _log(event: Event) -> None:
    log.info(
        "%s %s %s %s: %s %s", event.actor, event.verb, event.object_type, event.object_name,
        event.result, event.message,
    )  # fmt: skip


def record_many(entries: list[EventFields]) -> list[Event]:
    """Append many events (each given as `record`'s keyword arguments) in one INSERT per
    batch: a mass failure's thousands of state changes in one tick. Each is then announced as
    saved (post_save, so alerts see every one) and logged, as `record` does."""
    events = Event.objects.bulk_create([_event(e) for e in entries], batch_size=500)
    for event in events:
        post_save.send(Event, instance=event, created=True, raw=False, using="default",
                       update_fields=None)  # fmt: skip
        _log(event)
    return events


def record(**fields: Unpack[EventFields]) -> Event:
    """Append one event (``EventFields`` says what it holds)."""
    event = _event(fields)
    event.save()
    _log(event)
    return event
