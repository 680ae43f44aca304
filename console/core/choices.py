"""Choices derived from the engine's enums, and status choices that carry their badge colour
(NetBox's ChoiceSet): one class per kind of status holds each status's value, label, colour
and, for a guest, whether it occupies its host.

A member is ``NAME = value, label`` (``Choices``) or ``NAME = value, colour, label``
(``StatusChoices``); a value may be the engine's own enum member, stored as its text::

    class HostState(StatusChoices, kind="host"):
        ONLINE = engine.HostState.ONLINE, "green", "Online (heartbeats arriving)"

``kind`` names the set for templates (``{{ h.state|colour:'host' }}``) and ``occupying`` the
engine's states that hold a host; the sets declare themselves, so core names no domain app and
no colour table stands apart from its choices.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import models

#: the badge colours the style sheet draws (static/haven.css)
COLOURS = frozenset({"grey", "green", "amber", "red", "blue", "red strong"})

_KINDS: dict[str, type[StatusChoices]] = {}


class Choices(models.TextChoices):
    """Text choices whose values may be given as the engine's enum members (plain text)."""

    def __new__(cls, value: str) -> Any:
        member = str.__new__(cls, value)
        member._value_ = str(value)
        return member


class StatusChoices(Choices):
    """Choices whose members also have ``colour`` and ``occupies``."""

    colour: str
    occupies: bool

    def __new__(cls, value: str, colour: str = "grey") -> Any:
        if colour not in COLOURS:
            raise ValueError(f"{cls.__name__}.{value}: no badge colour {colour!r}")
        member = str.__new__(cls, value)
        member._value_ = str(value)
        member.colour, member.occupies = colour, False
        return member

    def __init_subclass__(
        cls, kind: str = "", occupying: Iterable[str] = (), **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        holding = {str(state) for state in occupying}
        for member in cls:
            member.occupies = member.value in holding
        if kind:
            if _KINDS.get(kind, cls) is not cls:
                raise ValueError(f"two status sets are called {kind!r}")
            _KINDS[kind] = cls

    @classmethod
    def occupying(cls) -> frozenset[str]:
        """The values of the statuses that occupy a host."""
        return frozenset(m.value for m in cls if m.occupies)

    @classmethod
    def colour_of(cls, value: str) -> str:
        """The badge colour of ``value`` (grey for one the set does not know)."""
        return cls(value).colour if value in cls.values else "grey"


def kinds() -> dict[str, type[StatusChoices]]:
    return dict(_KINDS)


def colour(kind: str, value: str) -> str:
    """The colour of ``value``, a status of ``kind``; KeyError for a kind no set declares (a
    template's typo)."""
    return _KINDS[kind].colour_of(value)
