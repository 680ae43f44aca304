"""Template helpers shared by every page: role checks, status colours, sizes, durations."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import template
from django.utils import timezone

from console.core import choices, roles

register = template.Library()


def user_roles(user: Any) -> frozenset[str]:
    """The user's roles, read once per request (templates ask for every row)."""
    cached: frozenset[str] | None = getattr(user, "_haven_roles", None)
    if cached is None:
        cached = roles.roles_of(user)
        if user.is_authenticated:
            user._haven_roles = cached
    return cached


@register.filter
def can_operate(user: Any) -> bool:
    return roles.OPERATOR in user_roles(user)


@register.filter
def can_admin(user: Any) -> bool:
    return roles.ADMIN in user_roles(user)


@register.filter
def colour(value: str, kind: str) -> str:
    """The badge colour of a status; ``kind`` is host, service, job, step, event or severity
    (each the ``kind`` of its status set, console/core/choices.py)."""
    return choices.colour(kind, value)


@register.filter
def bytes_h(value: int | None) -> str:
    """1073741824 -> '1.0 GiB' (binary units, as LVM shows them)."""
    size = float(value or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


@register.filter
def mib_h(value: int | None) -> str:
    return bytes_h((value or 0) * 1024 * 1024)


@register.filter
def since(value: dt.datetime | None) -> str:
    """How long ago, in a few plain words: '12 s', '3 min', '2 h 5 min', '4 days'."""
    if value is None:
        return ""
    return duration(int((timezone.now() - value).total_seconds()))


@register.filter
def duration(seconds: float | int | None) -> str:
    if seconds is None:
        return ""
    if seconds < 10:  # recovery times: tenths matter, more digits do not ("2.9 s")
        return f"{max(0.0, float(seconds)):.1f} s"
    s = max(0, int(seconds))
    if s < 90:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} days"


@register.filter
def get(mapping: dict[Any, Any], key: Any) -> Any:
    return mapping.get(key) if mapping else None


@register.filter
def mem_used(host: Any) -> str:
    """'1.2 GiB / 16.0 GiB' (used / total) from a host's reported memory."""
    total = int(host.memory_total_mb or 0)
    used = max(0, total - int(host.memory_free_mb or 0))
    return f"{mib_h(used)} / {mib_h(total)}"


@register.filter
def job_duration(job: Any) -> str:
    """How long a finished job took, from its start (or creation) to its end: '1.4 s'."""
    start = job.started or job.created
    if not job.finished or not start:
        return ""
    seconds = (job.finished - start).total_seconds()
    return f"{seconds:.1f} s" if seconds < 90 else duration(seconds)


@register.filter
def timeline(incident: Any) -> list[dict[str, Any]]:
    """The incident's rows of bars for its SVG strip (see ``Incident.timeline``)."""
    return list(incident.timeline(timezone.now()))


#: how a state reads beside its badge, where the bare value would puzzle a person
STATE_LABELS = {"fence": "waiting for fence", "recovering": "recovering", "new": "new"}


@register.filter
def state_label(value: str) -> str:
    return STATE_LABELS.get(value, value)
