"""The engine as the one rulebook for people's moves: the migrate page, the API and the CLI ask
it "may this guest move there?" and "where would it go?" on the live snapshot, the very answer
`tick` would give (console/engine/tick.py `Rulebook`), so the three can never drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from console import engine
from console.clusters.models import Cluster
from console.runtime.snapshot import load


@dataclass(frozen=True)
class Target:
    """One host as a move target: the engine's refusal (None = accepted) and its free memory."""

    host: str
    refusal: engine.Refusal | None
    free_mb: int | None
    best: bool = False

    @property
    def reason(self) -> str:
        return self.refusal.reason if self.refusal else ""


#: where the live picture comes from; tests that drive virtual time swap both (`use`)
_store: Any = None
_clock: Callable[[], float] = time.time


def store() -> Any:
    if _store is not None:
        return _store
    from console.runtime.tasks import store as shared

    return shared()


@contextmanager
def use(store: Any = None, clock: Callable[[], float] | None = None) -> Iterator[None]:
    """Answer from this store and clock (a test's virtual time) instead of the console's."""
    global _store, _clock
    previous = _store, _clock
    _store = store if store is not None else _store
    _clock = clock or _clock
    try:
        yield
    finally:
        _store, _clock = previous


def rulebook(cluster: Cluster) -> tuple[engine.Rulebook, engine.Snapshot]:
    loaded = load(cluster, store(), _clock())
    return engine.Rulebook(loaded.snapshot, loaded.now), loaded.snapshot


def free_memory(snapshot: engine.Snapshot) -> dict[str, int]:
    return {name: o.memory_free_mb for name, o in snapshot.hosts.items()}


def targets(cluster: Cluster, service: str, *, live: bool) -> list[Target]:
    """Every host with the engine's answer for moving ``service`` there, best first marked."""
    book, snapshot = rulebook(cluster)
    best = book.best_host(service)
    free = free_memory(snapshot)
    return [
        Target(host, refusal, free.get(host), best=host == best and refusal is None)
        for host, refusal in book.move_targets(service, live).items()
    ]
