"""The engine's timers. The defaults are the project's agreed values (DESIGN.md §2)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Settings:
    """Timers and limits of the HA engine, all in seconds unless named otherwise."""

    #: agents send a heartbeat this often
    heartbeat_interval_s: float = 1.0
    #: a host is unreachable once this many heartbeats in a row are missing
    missed_heartbeats: int = 3
    #: wait before the first fence retry; doubles after each further failure
    fence_retry_s: float = 5.0
    #: the longest wait between two fence attempts
    fence_retry_max_s: float = 60.0
    #: a fence action without a result after this long is followed by a power-status query
    #: of the same device (FenceStatus); a status query without a result after this long
    #: counts as a failed fence
    fence_timeout_s: float = 20.0
    #: a start/stop/migrate/relocate without a result after this long is *unknown*: the
    #: reports of the hosts involved decide what became of it
    action_timeout_s: float = 300.0
    #: heartbeats later than this (times the interval) make a host *late*: the fencing-storm
    #: guard counts late hosts, not only those already past the silence limit
    late_heartbeats: float = 1.5
    #: while the console's heartbeat ingestion is further behind than this, nobody is fenced
    max_ingest_lag_s: float = 1.0
    #: after a failed stop or migration, wait this long before trying that move again
    retry_s: float = 10.0
    #: a guest that ran this long before crashing starts a fresh failure streak
    stable_after_s: float = 60.0
    #: the first restart in place is immediate; each further one in a streak waits twice as
    #: long as the one before, from 1 s up to this (a start that always fails must not spin)
    restart_backoff_max_s: float = 30.0
    #: a host runs at most its CPUs times this many vCPUs (a hard limit beside memory);
    #: a host's own `HostObservation.cpu_overcommit` wins; 0 = no limit
    cpu_overcommit: float = 4.0
    #: admission control: a person's start or enable of a protected guest is refused when the
    #: cluster could not restart every protected guest after losing this many hosts (the
    #: worst ones; console/engine/admission.py); 0 = no admission control
    host_failures_to_tolerate: int = 1
    #: the live rebalancer (console/engine/rebalance.py): evens out memory use across the
    #: online hosts by live migration, opt-in per cluster
    rebalance: bool = False
    #: it acts only while the memory-use fractions of the hosts differ by more than this ...
    rebalance_spread: float = 0.2
    #: ... for this long in a row (hysteresis: a passing peak moves nothing)
    rebalance_hold_s: float = 60.0
    #: a move must narrow the gap between its source and target by at least this fraction
    rebalance_min_gain: float = 0.01
    #: at most this many moves (any migration or relocation) in flight at once
    rebalance_max_moves: int = 2
    #: no guest is moved by the rebalancer twice within this
    rebalance_cooldown_s: float = 600.0

    def silent_after_s(self) -> float:
        """How long without a heartbeat makes a host unreachable (the liveness window)."""
        return self.heartbeat_interval_s * self.missed_heartbeats

    def late_after_s(self) -> float:
        """How long without a heartbeat makes a host late (for the fencing-storm guard)."""
        return self.heartbeat_interval_s * self.late_heartbeats

    def restart_backoff_s(self, earlier_restarts: int) -> float:
        """Delay before a restart in place that follows `earlier_restarts` in the streak."""
        if earlier_restarts <= 0:
            return 0.0
        return float(min(2 ** (earlier_restarts - 1), self.restart_backoff_max_s))

    def fence_backoff_s(self, failures: int) -> float:
        """Delay before the next fence attempt after `failures` failed ones (>= 1)."""
        delay = self.fence_retry_s * (2 ** max(0, failures - 1))
        return float(min(delay, self.fence_retry_max_s))
