"""The runner's recent tick durations, kept in Redis beside its lock (a bounded list)."""

from __future__ import annotations

import time
from typing import Any

KEEP = 300  # the last five minutes at one tick a second


def record_tick(store: Any, cluster_id: int, seconds: float) -> None:
    key = f"{store.p}ticks:{cluster_id}"
    pipe = store.r.pipeline()
    pipe.lpush(key, f"{seconds:.6f}")
    pipe.ltrim(key, 0, KEEP - 1)
    pipe.set(f"{store.p}ticked:{cluster_id}", f"{time.time():.3f}", ex=3600)
    pipe.execute()


def last_tick(store: Any, cluster_ids: list[int]) -> dict[int, float | None]:
    """When each cluster's runner last finished a tick (console clock), None if not lately."""
    if not cluster_ids:
        return {}
    values = store.r.mget([f"{store.p}ticked:{c}" for c in cluster_ids])
    return {c: float(v) if v else None for c, v in zip(cluster_ids, values, strict=True)}


def recent_ticks(store: Any, cluster_id: int) -> list[float]:
    return [float(v) for v in store.r.lrange(f"{store.p}ticks:{cluster_id}", 0, KEEP - 1)]


def quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile of ``values`` (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]
