"""Placement: which host a service should run on (FORMAT.md's placement rule).

1. Failover-domain tiers: an ordered domain's members by priority (lower first), an unordered
   domain's members as one tier, then, unless the domain is restricted, every other host as a
   last tier. No domain: all hosts are one tier. A tier is used only when none before it has a
   usable host with room.
2. Within a tier, among hosts with room for the service's memory and vCPUs (a host takes at
   most its CPUs times the vCPU overcommit ratio, `vcpu_cap`): the lowest memory fraction
   after placing it (compared exactly, by cross-multiplying), then most free memory left, then
   lowest CPU fraction, then fewest services, then name.
3. When no host has room: stop running services of lower priority (see `preemption_plan`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from console.engine.model import Domain, ServiceConfig

Tiers = tuple[tuple[str, ...], ...]


def tiers(domain: Domain | None, usable: Sequence[str]) -> Tiers:
    """Candidate hosts of a service in `domain`, best tier first; `usable` is sorted."""
    if domain is None:
        return (tuple(usable),) if usable else ()
    usable_set = set(usable)
    out: list[tuple[str, ...]] = []
    if domain.ordered:
        by_priority: dict[int, list[str]] = {}
        for m in domain.members:
            by_priority.setdefault(m.priority, []).append(m.node)
        for priority in sorted(by_priority):
            tier = tuple(sorted(n for n in by_priority[priority] if n in usable_set))
            if tier:
                out.append(tier)
    else:
        tier = tuple(sorted({m.node for m in domain.members} & usable_set))
        if tier:
            out.append(tier)
    if not domain.restricted:
        members = {m.node for m in domain.members}
        rest = tuple(n for n in usable if n not in members)
        if rest:
            out.append(rest)
    return tuple(out)


def rank(domain: Domain | None, node: str) -> int:
    """Preference rank of `node` in `domain` (0 best); non-members after all members."""
    if domain is None:
        return 0
    member_priorities = sorted({m.priority for m in domain.members}) if domain.ordered else [0]
    for m in domain.members:
        if m.node == node:
            return member_priorities.index(m.priority) if domain.ordered else 0
    return len(member_priorities)


def allowed(domain: Domain | None, node: str) -> bool:
    """May the service run on `node` at all?"""
    return domain is None or not domain.restricted or any(m.node == node for m in domain.members)


def vcpu_limit(cpus: int, overcommit: float) -> int | None:
    """How many vCPUs a host with `cpus` CPUs may run at `overcommit` vCPUs per CPU (None:
    no limit, overcommit 0)."""
    if overcommit <= 0:
        return None
    return int(max(1, cpus) * overcommit)


@dataclass(slots=True)
class Usage:
    """Memory, CPUs and services counted on each host, updated as the engine places things."""

    mem_cap: dict[str, int]
    cpu_cap: dict[str, int]
    #: the most vCPUs each host may run (CPUs x overcommit); a host not named has no limit
    vcpu_cap: dict[str, int] = field(default_factory=dict)
    mem: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, int] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    #: memory that stops in flight will free
    stopping: dict[str, int] = field(default_factory=dict)
    #: vCPUs that stops in flight will free
    stopping_cpu: dict[str, int] = field(default_factory=dict)
    #: memory promised this tick to a service waiting for those stops
    claimed: dict[str, int] = field(default_factory=dict)
    #: vCPUs promised this tick to a service waiting for those stops
    claimed_cpu: dict[str, int] = field(default_factory=dict)

    def add(self, host: str, cfg: ServiceConfig, sign: int = 1, *, stopping: bool = False) -> None:
        self.mem[host] = self.mem.get(host, 0) + sign * cfg.memory_mb
        self.cpu[host] = self.cpu.get(host, 0) + sign * cfg.cpus
        self.count[host] = self.count.get(host, 0) + sign
        if stopping:
            self.stopping[host] = self.stopping.get(host, 0) + sign * cfg.memory_mb
            self.stopping_cpu[host] = self.stopping_cpu.get(host, 0) + sign * cfg.cpus

    def free(self, host: str) -> int:
        return self.mem_cap.get(host, 0) - self.mem.get(host, 0)

    def free_vcpus(self, host: str) -> int | None:
        """vCPUs the host may still take (None: no limit)."""
        cap = self.vcpu_cap.get(host)
        return None if cap is None else cap - self.cpu.get(host, 0)

    def fits(self, host: str, cfg: ServiceConfig) -> bool:
        if host not in self.mem_cap or cfg.memory_mb > self.free(host):
            return False
        cap = self.vcpu_cap.get(host)
        return cap is None or self.cpu.get(host, 0) + cfg.cpus <= cap

    def no_room(self, host: str, cfg: ServiceConfig) -> str:
        """Why `cfg` does not fit on `host`, with the numbers ('' when it fits)."""
        if host not in self.mem_cap:
            return f"{host} is not usable"
        if cfg.memory_mb > self.free(host):
            return f"needs {cfg.memory_mb} MiB, {host} has {self.free(host)} MiB free"
        cap = self.vcpu_cap.get(host)
        used = self.cpu.get(host, 0)
        if cap is not None and used + cfg.cpus > cap:
            return (
                f"needs {cfg.cpus} vCPUs, {host} runs {used} of at most {cap} "
                f"({self.cpu_cap.get(host, 1)} CPUs x the overcommit ratio)"
            )
        return ""


def _better(u: Usage, cfg: ServiceConfig, a: str, b: str) -> bool:
    """Is host `a` a better place than host `b` for `cfg` (both have room)?"""
    a_cap, b_cap = u.mem_cap[a], u.mem_cap[b]
    a_used, b_used = u.mem.get(a, 0) + cfg.memory_mb, u.mem.get(b, 0) + cfg.memory_mb
    left, right = a_used * b_cap, b_used * a_cap
    if left != right:
        return left < right
    a_free, b_free = a_cap - a_used, b_cap - b_used
    if a_free != b_free:
        return a_free > b_free
    a_ccap, b_ccap = max(1, u.cpu_cap.get(a, 1)), max(1, u.cpu_cap.get(b, 1))
    left = (u.cpu.get(a, 0) + cfg.cpus) * b_ccap
    right = (u.cpu.get(b, 0) + cfg.cpus) * a_ccap
    if left != right:
        return left < right
    a_n, b_n = u.count.get(a, 0), u.count.get(b, 0)
    if a_n != b_n:
        return a_n < b_n
    return a < b


def best_in(hosts: Iterable[str], cfg: ServiceConfig, usage: Usage) -> str | None:
    """The best host with room among `hosts`, or None."""
    best: str | None = None
    for h in hosts:
        if usage.fits(h, cfg) and (best is None or _better(usage, cfg, h, best)):
            best = h
    return best


def choose(
    candidate_tiers: Tiers, cfg: ServiceConfig, usage: Usage, exclude: Collection[str] = ()
) -> str | None:
    """The host the service should start on, or None when no candidate has room."""
    for tier in candidate_tiers:
        best = best_in((h for h in tier if h not in exclude), cfg, usage)
        if best is not None:
            return best
    return None


@dataclass(frozen=True, slots=True)
class Preemption:
    host: str
    #: services to stop (empty: stops already in flight will make room)
    victims: tuple[str, ...]


def preemption_plan(
    candidate_tiers: Tiers,
    cfg: ServiceConfig,
    usage: Usage,
    victims_on: Mapping[str, Sequence[ServiceConfig]],
    exclude: Collection[str] = (),
    taken: Collection[str] = (),
) -> Preemption | None:
    """Where to make room for `cfg` by stopping services of lower priority.

    `victims_on[host]` lists the running services that could be stopped there, least
    important first, then biggest first, then by name (see `victim_order`); names in `taken`
    are already being stopped. In the first tier where any plan exists, the host needing the
    fewest stops wins (a host where stops in flight already make room needs none), then the
    one whose most important victim matters least, then the name.
    """
    for tier in candidate_tiers:
        best: tuple[tuple[int, int, str], Preemption] | None = None
        for host in tier:
            if host in exclude or host not in usage.mem_cap:
                continue
            room = usage.free(host) + usage.stopping.get(host, 0) - usage.claimed.get(host, 0)
            need = cfg.memory_mb - room
            free_cpu = usage.free_vcpus(host)
            need_cpu = 0
            if free_cpu is not None:
                cpu_room = free_cpu + usage.stopping_cpu.get(host, 0)
                need_cpu = cfg.cpus - cpu_room + usage.claimed_cpu.get(host, 0)
            chosen: list[ServiceConfig] = []
            for v in victims_on.get(host, ()) if need > 0 or need_cpu > 0 else ():
                if v.priority >= cfg.priority:
                    break
                if v.name in taken:
                    continue
                chosen.append(v)
                need -= v.memory_mb
                need_cpu -= v.cpus
                if need <= 0 and need_cpu <= 0:
                    break
            if need > 0 or need_cpu > 0:
                continue
            top = max((v.priority for v in chosen), default=-(2**31))
            key = (len(chosen), top, host)
            if best is None or key < best[0]:
                best = (key, Preemption(host, tuple(v.name for v in chosen)))
        if best is not None:
            return best[1]
    return None


def victim_order(v: ServiceConfig) -> tuple[int, int, str]:
    """Which running service to stop first to make room: least important, biggest, name."""
    return (v.priority, -v.memory_mb, v.name)
