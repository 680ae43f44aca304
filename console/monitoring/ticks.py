"""The runner's recent tick durations, kept in Redis beside its lock (a bounded list)."""

from __future__ import annotations

from typing import Any

KEEP = 300  # the last five minutes at one tick a second


def record_tick(store: Any, cluster_id: int, seconds: float) -> None:
    key = f"{store.p}ticks:{cluster_id}"
    pipe = store.r.pipeline()
    pipe.lpush(key, f"{seconds:.6f}")
    pipe.ltrim(key, 0, KEEP - 1)
    pipe.execute()


def recent_ticks(store: Any, cluster_id: int) -> list[float]:
    return [float(v) for v in store.r.lrange(f"{store.p}ticks:{cluster_id}", 0, KEEP - 1)]


def quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile of ``values`` (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]
