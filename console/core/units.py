"""Memory sizes: MiB (2^20 bytes) everywhere.

libvirt's sizes (KiB, or the unit a domain XML names) and the agents' heartbeats
(``memory_total_mib``, ``memory_free_mib``) are converted to MiB. The database columns and the
REST API's fields keep their first names, which end in ``_mb`` (``memory_mb``,
``memory_total_mb``, ...): renaming them would break every API client, the CLI's users' scripts
and the engine's scenario files. Each such field says MiB in its OpenAPI description
(``mib``), the pages and the CLI print MiB/GiB, and new code names its sizes ``_mib``.
"""

from __future__ import annotations

from typing import Any


def mib(what: str) -> dict[str, Any]:
    """A serializer field's keyword arguments describing a size in MiB (``extra_kwargs`` or a
    field's own): ``what`` it measures, then the unit, which the name ``_mb`` does not say."""
    return {"help_text": f"{what}, in MiB (2^20 bytes; the name says _mb, the unit is MiB)"}
