"""The cluster page's policy panel — the failover capacity (admission control) and the live
rebalancer's plan — computed once per engine tick, kept in the store and served from there
with the tick and the time it was computed at, so the page never shows an old answer as new.

At 10,000 guests the engine's answers cost a few hundred milliseconds (a `Rulebook` on the
live snapshot: admission control's levels, the tolerated failures, the rebalancer's plan); the
page paid them on every request. Now:

- a page (or ``GET /api/clusters/{id}/policy/``) reads the kept panel (one store round trip) and
  marks it watched for ``WATCH_S``;
- after each beat's ticks, the worker refreshes every watched panel whose tick is behind the
  engine's (``refresh_watched``, from ``console.ha.tasks.tick``): once per tick, only while
  someone looks, and no sooner than ``COST_FACTOR`` times its own cost after the last (at most
  ``REFRESH_MAX_S``): at 10,000 guests a panel costs ~330 ms of CPU, which every tick would be a
  third of a core taken from the HA loop while a page is open; a small cluster's panel (a few
  ms) is still computed every tick;
- the request computes it itself only when nothing is kept or the inputs that are not the
  live picture changed (the cluster's policy settings, its configuration version — a person's
  edit shows at once), or the kept one is from another life of the cluster row.

The panel says which tick it is for, how old it is and how many ticks the engine has made since
(``ticks_behind``): a panel the worker stopped refreshing says so instead of lying.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from redis import RedisError

from console.clusters.models import Cluster
from console.ha import rules
from console.ha.models import EngineState
from console.ha.store import Store
from console.services.models import VmService

log = logging.getLogger("haven.panel")

#: a read keeps the panel refreshed every tick for this long
WATCH_S = 60.0
#: older than this and behind the engine: the page shows the panel as stale
STALE_S = 5.0
#: a watched panel is computed again no sooner than this many times its own CPU cost after the
#: last time (its refresh costs at most a tenth of a core) ...
COST_FACTOR = 10.0
#: ... and never later than this after the last (well inside STALE_S)
REFRESH_MAX_S = STALE_S / 2


@dataclass(frozen=True)
class Panel:
    #: ``rules.Policy.as_dict()``: ``failover`` and ``rebalance``
    policy: dict[str, Any]
    #: the engine's tick counter the answer is for (``EngineState.ticks`` it was computed at)
    tick: int
    #: when it was computed (the console's clock)
    computed_at: float
    #: what else it depends on (``inputs``): another value means it must be computed again
    inputs: str
    #: the engine's tick counter and the clock when it was read
    engine_tick: int = 0
    read_at: float = 0.0
    #: the CPU time it took to compute (s)
    cost_s: float = 0.0

    @property
    def failover(self) -> dict[str, Any]:
        return dict(self.policy["failover"])

    @property
    def rebalance(self) -> dict[str, Any] | None:
        r = self.policy.get("rebalance")
        return None if r is None else dict(r)

    @property
    def age_s(self) -> float:
        return max(0.0, self.read_at - self.computed_at)

    @property
    def refresh_after_s(self) -> float:
        """How long after it was computed a refresh may come (``COST_FACTOR``)."""
        return min(REFRESH_MAX_S, COST_FACTOR * self.cost_s)

    @property
    def ticks_behind(self) -> int:
        return max(0, self.engine_tick - self.tick)

    @property
    def stale(self) -> bool:
        return self.ticks_behind > 0 and self.age_s > STALE_S

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.policy,
            "tick": self.tick,
            "computed_at": self.computed_at,
            "age_s": round(self.age_s, 3),
            "ticks_behind": self.ticks_behind,
            "stale": self.stale,
        }

    def to_json(self) -> str:
        return json.dumps(
            {
                "policy": self.policy,
                "tick": self.tick,
                "computed_at": self.computed_at,
                "inputs": self.inputs,
                "cost_s": self.cost_s,
            }
        )

    @classmethod
    def from_json(cls, text: str | None) -> Panel | None:
        if not text:
            return None
        try:
            raw = json.loads(text)
            return cls(
                raw["policy"],
                int(raw["tick"]),
                float(raw["computed_at"]),
                raw["inputs"],
                cost_s=float(raw.get("cost_s") or 0.0),
            )
        except (ValueError, KeyError, TypeError):
            return None  # written by another version: computed again


def inputs(cluster: Cluster, state: EngineState) -> str:
    """Everything the panel depends on besides the live picture: the cluster row (its id and
    creation: a test database reuses ids), its policy settings, the configuration version and
    the newest service (a bulk create bumps no version)."""
    top = VmService.objects.filter(cluster=cluster).order_by("-id").values_list("id").first()
    return json.dumps(
        [
            cluster.pk,
            cluster.created.isoformat() if cluster.created else "",
            float(cluster.cpu_overcommit),
            int(cluster.host_failures_to_tolerate),
            bool(cluster.rebalance),
            state.config_version,
            top[0] if top else None,
        ]
    )


def _state(cluster: Cluster) -> EngineState:
    """The cluster's engine state (the one read with the cluster when it was)."""
    try:
        return cluster.engine
    except EngineState.DoesNotExist:
        state, _ = EngineState.objects.get_or_create(cluster=cluster)
        return state


def compute(cluster: Cluster) -> Panel:
    """The engine's answers now, kept in the store (unknown, and not kept, while the broker
    does not answer)."""
    cpu = time.thread_time()
    policy, state = rules.policy_at(cluster)
    cost, now = time.thread_time() - cpu, rules._clock()
    if state is None:  # the broker does not answer
        state = _state(cluster)
        return Panel(policy.as_dict(), state.ticks, now, "", state.ticks, now)
    panel = Panel(
        policy.as_dict(), state.ticks, now, inputs(cluster, state), state.ticks, now, cost
    )
    try:
        rules.store().put_panel(cluster.pk, panel.to_json())
    except (RedisError, OSError) as exc:
        log.warning("policy panel of %s not kept: %s", cluster.name, exc)
    return panel


def get(cluster: Cluster) -> Panel:
    """The panel to show now: the kept one with its age, or computed when none fits."""
    state = _state(cluster)
    try:
        kept = Panel.from_json(rules.store().get_panel(cluster.pk, watch_s=WATCH_S))
    except (RedisError, OSError):
        kept = None
    if kept is None or kept.tick > state.ticks or kept.inputs != inputs(cluster, state):
        return compute(cluster)
    return replace(kept, engine_tick=state.ticks, read_at=rules._clock())


def refresh_watched(store: Store) -> list[int]:
    """Compute again every watched panel whose tick is behind its engine's and whose
    ``refresh_after_s`` has passed (after the beat's ticks); returns the clusters refreshed."""
    ticks = dict(EngineState.objects.values_list("cluster_id", "ticks"))
    done: list[int] = []
    for cluster_id in store.watched_panels(sorted(ticks)):
        kept = Panel.from_json(store.get_panel(cluster_id))
        if kept is not None and (
            kept.tick >= ticks[cluster_id]
            or store.clock() - kept.computed_at < kept.refresh_after_s
        ):
            continue
        with store.lock(f"panel:{cluster_id}") as lease:
            if not lease:  # another worker is at it
                continue
            cluster = Cluster.objects.filter(pk=cluster_id).first()
            if cluster is not None:
                with rules.use(store=store, clock=store.clock):
                    compute(cluster)
                done.append(cluster_id)
    return done
