"""The runner's recent tick durations, kept in the store beside its lock (a bounded list)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from console.ha.store import TICKS_KEPT as KEEP

if TYPE_CHECKING:
    from console.ha.store import Store

__all__ = ["KEEP", "last_tick", "quantile", "recent_ticks", "record_tick"]


def record_tick(store: Store, cluster_id: int, seconds: float, cpu_s: float | None = None) -> None:
    store.record_tick(cluster_id, seconds, store.clock(), cpu_s)


def last_tick(store: Store, cluster_ids: list[int]) -> dict[int, float | None]:
    """When each cluster's runner last finished a tick (console clock), None if not lately."""
    return store.last_ticks(cluster_ids)


def recent_ticks(store: Store, cluster_id: int) -> list[float]:
    return store.recent_ticks(cluster_id)


def quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile of ``values`` (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]
