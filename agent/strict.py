"""Celery workers that run only their own tasks (the agent's and the console's).

Celery registers built-in tasks (``celery.group``, ``celery.chord``, ``celery.chain``,
``celery.map``, ``celery.backend_cleanup``, ...) in every app, and its worker runs whatever a
message attaches: callbacks (``link``), errbacks, a chain, a chord or a group, each published
with the worker's own broker rights. A Haven worker has neither:

- ``prune(app, allowed)`` unregisters every task whose name is not allowed, once the app is
  finalized, so a built-in task name is an unknown task (Celery logs it, acks and drops it);
- ``StrictTask`` (the apps' task class) handles each message of a registered task through
  ``strategy``, which refuses (logs once without the body, acks, drops) a message carrying any
  of ``FORBIDDEN`` before the task's own strategy sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.worker import strategy as celery_strategy

log = logging.getLogger("haven.strict")

# Protocol 2 keeps these in the body's third element (embed); protocol 1 in the body itself.
FORBIDDEN = ("callbacks", "errbacks", "chain", "chord", "group", "taskset", "link", "link_error")


def refusal(message: Any) -> str | None:
    """Why a task message must not run (a callback, errback, chain, chord, group), or None."""
    headers = message.headers or {}
    try:
        body = message.decode() if "task" in headers else message.payload
    except Exception:
        return "its body cannot be decoded"
    if "task" in headers:  # protocol 2: [args, kwargs, embed]
        if not isinstance(body, list | tuple) or len(body) != 3 or not isinstance(body[2], dict):
            return "its body is not [args, kwargs, embed]"
        attached = body[2]
        if headers.get("group") is not None or headers.get("group_index") is not None:
            return "it belongs to a group"
    elif isinstance(body, dict):  # protocol 1
        attached = body
    else:
        return "it is not a Celery task message"
    for name in FORBIDDEN:
        if attached.get(name):
            return f"it carries {name}"
    return None


def strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Callable[..., Any]:
    """Celery's default strategy behind the refusal check."""
    handle = getattr(celery_strategy, "default")(task, app, consumer, **kwargs)  # noqa: B009

    def guarded(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
        why = refusal(message)
        if why is not None:
            headers = message.headers or {}
            log.error(
                "refused task message %s (%s): %s; dropped",
                headers.get("id", "?"),
                task.name,
                why,
            )
            message.ack()
            return None
        return handle(message, body, ack, reject, callbacks, **kw)

    return guarded


class StrictTask(Task):  # type: ignore[type-arg]
    """The task class of Haven's Celery apps: every message goes through ``strategy``."""

    Strategy = "agent.strict:strategy"


def prune(app: Celery, allowed: Callable[[str], bool]) -> None:
    """Unregister every task of ``app`` whose name is not ``allowed`` (Celery's built-ins)."""

    def _prune(sender: Celery, **_kwargs: Any) -> None:
        tasks: Any = sender.tasks  # the stubs do not list TaskRegistry.unregister
        for name in list(tasks):
            if not allowed(name):
                tasks.unregister(name)

    app.on_after_finalize.connect(_prune, weak=False)
    if getattr(app, "finalized", False):
        _prune(app)
