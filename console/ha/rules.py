"""The engine as the one rulebook for people's moves: the migrate page, the API and the CLI ask
it "may this guest move there?" and "where would it go?" on the live snapshot, the very answer
`tick` would give (console/engine/tick.py `Rulebook`), so the three can never drift apart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from redis import RedisError

from console import engine
from console.clusters.models import Cluster
from console.ha.models import EngineState
from console.ha.snapshot import Loaded, load, service_config
from console.services.models import VmService

log = logging.getLogger("haven.rules")


@dataclass(frozen=True)
class Target:
    """One host as a move target: the engine's refusal (None = accepted) and its free memory."""

    host: str
    refusal: engine.Refusal | None
    free_mib: int | None
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
    from console.ha.tasks import store as shared

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
    book, loaded = _rulebook(cluster)
    return book, loaded.snapshot


def _rulebook(cluster: Cluster) -> tuple[engine.Rulebook, Loaded]:
    loaded = load(cluster, store(), _clock(), cached=True)  # the config kept per process
    return engine.Rulebook(loaded.snapshot, loaded.now), loaded


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


# --- admission control and the cluster's failover capacity (console/engine/admission.py) ----


def start_refusal(cluster: Cluster, service: VmService) -> engine.Refusal | None:
    """Admission control's answer to starting or enabling ``service`` now (a saved one, or one
    about to be created): the engine's own refusal, or None. When the live picture cannot be
    read (the broker does not answer) there is no answer here: the engine still refuses a
    start command that breaks it when it applies the command."""
    try:
        book, _snapshot = rulebook(cluster)
    except (RedisError, OSError) as exc:
        log.warning("admission control not checked for %s: %s", service.name, exc)
        return None
    known = service.pk is not None and service.name in _snapshot.services
    return book.start_refusal(service.name if known else service_config(service))


def change_refusal(cluster: Cluster, service: VmService) -> engine.Refusal | None:
    """Admission control's answer to saving ``service`` (edited, not yet saved) when its guest
    should run: more memory, a higher priority or protected again must still fit. None when
    the live picture cannot be read (as for `start_refusal`)."""
    try:
        book, _snapshot = rulebook(cluster)
    except (RedisError, OSError) as exc:
        log.warning("admission control not checked for %s: %s", service.name, exc)
        return None
    return book.change_refusal(service_config(service))


@dataclass(frozen=True)
class Failover:
    """The cluster's failover capacity for its page and API."""

    #: the cluster's setting (0: admission control is off)
    tolerate: int
    #: how many host failures (the worst ones) it survives now
    survives: int
    capacity: engine.Capacity | None

    @property
    def summary(self) -> str:
        """ "survives 1 host failure; 3.2 GiB spare" (for the setting), and what it survives."""
        if self.capacity is None:
            return "unknown (the broker does not answer)"
        text = self.capacity.describe()
        if self.tolerate == 0:
            text = f"admission control off; {text}"
        if self.survives != max(1, self.tolerate):
            text += f" (survives {self.survives} at most)"
        return text

    def as_dict(self) -> dict[str, Any]:
        c = self.capacity
        return {
            "host_failures_to_tolerate": self.tolerate,
            "survives": self.survives,
            "summary": self.summary,
            "ok": None if c is None else c.ok,
            "spare_mb": None if c is None else c.spare_mb,
            "needed_mb": None if c is None else c.needed_mb,
            "free_mb": None if c is None else c.free_mb,
            "worst_hosts": [] if c is None else list(c.worst),
        }


def rebalance_dict(outlook: engine.RebalanceOutlook) -> dict[str, Any]:
    return {
        "stance": outlook.stance.value,
        "reason": outlook.reason,
        "spread": round(outlook.spread, 4),
        "moves": [
            {
                "service": m.service,
                "from_host": m.source,
                "to_host": m.target,
                "gain": round(m.gain, 4),
                "source_use": round(m.before[0], 4),
                "target_use": round(m.before[1], 4),
            }
            for m in outlook.moves
        ],
    }


@dataclass(frozen=True)
class Policy:
    """What the cluster page and ``GET /api/clusters/{id}/policy/`` show: the failover
    capacity (admission control) and the live rebalancer's plan and why."""

    failover: Failover
    rebalance: engine.RebalanceOutlook | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "failover": self.failover.as_dict(),
            "rebalance": None if self.rebalance is None else rebalance_dict(self.rebalance),
        }


def policy(cluster: Cluster) -> Policy:
    """The engine's answers on the live snapshot (one load); unknown while the broker does
    not answer. The cluster page serves them kept per tick (console/ha/panel.py)."""
    return policy_at(cluster)[0]


def policy_at(cluster: Cluster) -> tuple[Policy, EngineState | None]:
    """``policy`` and the engine state row it was read at (its tick counter and configuration
    version; None when the broker did not answer)."""
    tolerate = int(cluster.host_failures_to_tolerate)
    try:
        book, loaded = _rulebook(cluster)
    except (RedisError, OSError) as exc:
        log.warning("policy of %s unknown: %s", cluster.name, exc)
        return Policy(Failover(tolerate, 0, None), None), None
    failover = Failover(tolerate, book.tolerated(), book.capacity(max(1, tolerate)))
    return Policy(failover, book.rebalance()), loaded.state
