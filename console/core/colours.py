"""Badge colours by kind of status (host, service, job, step, event, severity).

Each app registers its own tables (``register`` in its AppConfig.ready), beside the choices
they colour, so core names no domain app; the ``colour`` template filter reads them here.
"""

from __future__ import annotations

from collections.abc import Mapping

_TABLES: dict[str, Mapping[str, str]] = {}


def register(kind: str, table: Mapping[str, str]) -> None:
    """Give ``kind``'s statuses their colours (once per kind)."""
    if _TABLES.get(kind, table) is not table:
        raise ValueError(f"badge colours of {kind!r} are registered twice")
    _TABLES[kind] = table


def kinds() -> frozenset[str]:
    return frozenset(_TABLES)


def of(kind: str, value: str) -> str:
    """The colour of ``value``, a status of ``kind`` (grey for one the table does not know);
    KeyError for a kind nobody registered (a template's typo)."""
    return _TABLES[kind].get(value, "grey")
