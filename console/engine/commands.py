"""A person's commands: they carry ids so that every one gets a reply, even much later."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class CommandKind(StrEnum):
    START = "start"
    STOP = "stop"
    ENABLE = "enable"
    DISABLE = "disable"
    MIGRATE = "migrate"
    RELOCATE = "relocate"


@dataclass(frozen=True, slots=True)
class Command:
    """A person's request; every command gets a Reply (at once, or when it is applied)."""

    id: str
    kind: CommandKind
    service: str
    #: target host of migrate/relocate
    node: str | None = None
