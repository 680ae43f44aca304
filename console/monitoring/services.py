"""Alerts: which events deserve one, and their delivery to each hook that wants them.

An event is classified once, when it is written (a ``post_save`` signal); the delivery runs
after the transaction commits, in the console's Celery worker (``haven.console.alert``), so
a slow webhook never holds the HA runner. Payloads carry the event's typed data, never a
secret (events never hold one).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from console import engine
from console.core import crypto
from console.events.models import Event, EventResult
from console.monitoring.choices import HookKind, Topic
from console.monitoring.models import AlertHook

log = logging.getLogger("haven.alerts")
TIMEOUT_S = 5.0
#: refusals that mean the cluster is short of room (alerted as admission)
_ROOM_REFUSALS = frozenset({engine.RefusalCode.NO_ROOM, engine.RefusalCode.ADMISSION})


def topic_of(event: Event) -> str | None:
    """The alert topic of an event, or None for the routine ones."""
    data = event.data if isinstance(event.data, dict) else {}
    new, old = data.get("new"), data.get("old")
    if event.verb == "host-state":
        if new == "unreachable" and old == "fencing":
            return Topic.FENCE_FAILED
        if new == "unreachable":
            return Topic.INCIDENT
        return None
    if event.verb == "service-state":
        # a guest of a lost host is part of the host's incident, alerted once for the host
        if new == "failed" or (new == "recovering" and old != "fence"):
            return Topic.INCIDENT
        return None
    if event.verb == "alarm" and data.get("alarm"):
        return Topic.STORM
    if event.result == EventResult.REFUSED and data.get("code") in _ROOM_REFUSALS:
        return Topic.ADMISSION
    if event.verb == "alert-test":
        return Topic.TEST
    return None


def payload(event: Event, topic: str) -> dict[str, Any]:
    return {
        "topic": topic,
        "summary": summary(event),
        "cluster": event.cluster.name if event.cluster else None,
        "event": {
            "id": event.pk,
            "time": event.time.isoformat(),
            "actor": event.actor,
            "verb": event.verb,
            "object_type": event.object_type,
            "object_name": event.object_name,
            "result": event.result,
            "severity": event.severity,
            "message": event.message,
            "data": event.data,
        },
    }


def summary(event: Event) -> str:
    where = f" in {event.cluster.name}" if event.cluster else ""
    what = f"{event.object_type} {event.object_name}".strip()
    return f"[{event.severity}] {what}{where}: {event.message}".strip()


def hooks_for(event: Event, topic: str) -> list[AlertHook]:
    hooks = AlertHook.objects.filter(enabled=True).filter(
        Q(cluster__isnull=True) | Q(cluster_id=event.cluster_id)
    )
    return [h for h in hooks if topic == Topic.TEST or topic in (h.topics or [])]


def signing_key(hook: AlertHook) -> str:
    return str(crypto.decrypt_json(hook.secret).get("key", "")) if hook.secret else ""


def set_signing_key(hook: AlertHook, key: str) -> None:
    hook.secret = crypto.encrypt_json({"key": key}) if key else ""


def send(hook: AlertHook, body: dict[str, Any]) -> str:
    """Deliver one alert to one hook; returns what happened in a few words (never raises)."""
    try:
        if hook.kind == HookKind.WEBHOOK:
            data = json.dumps(body, sort_keys=True).encode()
            headers = {"Content-Type": "application/json", "X-Haven-Topic": body["topic"]}
            key = signing_key(hook)
            if key:
                mac = hmac.new(key.encode(), data, hashlib.sha256).hexdigest()
                headers["X-Haven-Signature"] = f"sha256={mac}"
            request = urllib.request.Request(hook.url, data=data, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                result = f"HTTP {response.status}"
        else:
            send_mail(
                subject=f"Haven: {body['summary']}"[:200],
                message=json.dumps(body, indent=2, sort_keys=True),
                from_email=settings.DEFAULT_FROM_EMAIL,
                recipient_list=hook.recipients(),
            )
            result = f"mailed {len(hook.recipients())}"
    except urllib.error.HTTPError as exc:
        result = f"failed: HTTP {exc.code}"
    except Exception as exc:  # a hook's failure is reported on the hook, never raised
        result = f"failed: {exc.__class__.__name__}: {exc}"[:500]
    AlertHook.objects.filter(pk=hook.pk).update(last_sent_at=timezone.now(), last_result=result)
    (log.warning if result.startswith("failed") else log.info)(
        "alert %s to hook %s: %s", body["topic"], hook.name, result
    )
    return result


def deliver(event_id: int, only_hook: int | None = None) -> dict[str, str]:
    """Send the event's alert to every hook that wants it (or to one, for a test)."""
    event = Event.objects.select_related("cluster").filter(pk=event_id).first()
    if event is None:
        return {}
    topic = topic_of(event)
    if topic is None:
        return {}
    body = payload(event, topic)
    hooks = hooks_for(event, topic)
    if only_hook is not None:
        hooks = [h for h in hooks if h.pk == only_hook]
    return {h.name: send(h, body) for h in hooks}


def _dispatch_celery(event_id: int, only_hook: int | None) -> None:
    from console.monitoring.tasks import alert

    try:
        alert.apply_async(args=(event_id, only_hook), retry=False, expires=300)
    except Exception as exc:  # broker away: the event log still has it; say so once
        log.warning("alert for event %s not queued: %s", event_id, exc)


_dispatch: Callable[[int, int | None], None] = _dispatch_celery


@contextmanager
def use_dispatcher(fn: Callable[[int, int | None], None]) -> Iterator[None]:
    """Tests deliver inline (or record) instead of going through the broker."""
    global _dispatch
    previous, _dispatch = _dispatch, fn
    try:
        yield
    finally:
        _dispatch = previous


def on_event(sender: Any, instance: Event, created: bool, **kwargs: Any) -> None:
    topic = topic_of(instance) if created else None
    if topic is None or topic == Topic.TEST:  # test alerts are delivered inline, to one hook
        return
    if not AlertHook.objects.filter(enabled=True).exists():
        return  # nobody to tell: no broker round trip in the HA runner's tick
    event_id = instance.pk

    def dispatch() -> None:
        # off the committing thread: a slow or absent broker never holds the HA runner
        threading.Thread(
            target=_dispatch, args=(event_id, None), name="alert-dispatch", daemon=True
        ).start()

    transaction.on_commit(dispatch)


def test_hook(hook: AlertHook, *, actor: str) -> str:
    """The Test button: a test event in the log, delivered to this hook now."""
    from console.events.services import record

    event = record(
        actor=actor,
        verb="alert-test",
        obj=hook,
        cluster=hook.cluster,
        result="info",
        message=f"test alert for hook {hook.name}",
        data={"hook": hook.name, "at": dt.datetime.now(dt.UTC).isoformat()},
    )
    return deliver(event.pk, only_hook=hook.pk).get(hook.name, "not sent (hook disabled)")
