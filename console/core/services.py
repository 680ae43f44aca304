"""Generic writes: every create, update and delete is atomic and lands in the event log."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import models, transaction

from console.core.errors import Refused
from console.events.services import record


def cluster_of(obj: models.Model) -> Any:
    """The cluster an object belongs to, following the usual relations, or None."""
    if obj._meta.label_lower == "clusters.cluster":
        return obj
    for path in ("cluster", "host", "domain", "volume_group", "logical_volume", "job"):
        related = getattr(obj, path, None) if hasattr(obj, f"{path}_id") else None
        if related is not None:
            return cluster_of(related)
    return None


def actor_name(actor: AbstractBaseUser | AnonymousUser | str | None) -> str:
    if isinstance(actor, str):
        return actor
    if actor is None or not actor.is_authenticated:
        return "anonymous"
    return actor.get_username()


def refused(obj: models.Model, *, actor: Any, verb: str, reason: str) -> None:
    """Log that ``verb`` on ``obj`` was refused, in a transaction of its own: the refusal stays
    in the event log although the request then ends in an error."""
    with transaction.atomic():
        record(
            actor=actor_name(actor),
            verb=verb,
            obj=obj,
            cluster=cluster_of(obj),
            result="refused",
            message=reason,
        )


def delete_unused(
    obj: models.Model, users: list[str], *, actor: Any, reason: str, refusal: str
) -> None:
    """Delete ``obj`` unless something still uses it (``users``, by name): then the refusal is
    logged (``reason``) and raised (``refusal``, 409); nothing is deleted by cascade."""
    if users:
        refused(obj, actor=actor, verb="delete", reason=reason)
        raise Refused(refusal)
    delete_object(obj, actor=actor)


def save_serializer(serializer: Any, *, actor: Any, verb: str) -> models.Model:
    with transaction.atomic():
        obj: models.Model = serializer.save()
        record(actor=actor_name(actor), verb=verb, obj=obj, cluster=cluster_of(obj))
    return obj


def delete_object(obj: models.Model, *, actor: Any) -> None:
    with transaction.atomic():
        cluster = cluster_of(obj)
        description = str(obj)
        object_type = obj._meta.model_name or ""
        obj.delete()
        if cluster is obj:  # the cluster itself is gone; the event outlives it
            cluster = None
        record(
            actor=actor_name(actor),
            verb="delete",
            object_type=object_type,
            object_name=description,
            cluster=cluster,
        )
