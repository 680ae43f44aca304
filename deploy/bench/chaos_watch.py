"""The chaos suite's independent watcher: what really ran where, from the agents themselves.

Not the console's view. With libvirt's test:/// driver every guest lives inside its agent
process, so the truth comes from two records the console never writes:

- the agents' opt-in trace (``HAVEN_AGENT_TRACE``, agent/hypervisor.py): one JSON line per guest
  start, shutdown, destroy, migration, lifecycle event and libvirt (re)connection, with wall-clock
  time and the agent's pid — one file per host;
- the power log (``power.jsonl``), written by the chaos runner and by the fence agent
  (deploy/bench/fence_haven_chaos): every agent boot, every kill (power loss by the runner,
  power off by a fence: a killed agent's guests die at that moment), SIGSTOP/SIGCONT (a hung
  host's guests keep running), every fence begun and done, and any agent that exited by itself.

From these, `analyse` computes every interval during which a guest ran on two hosts, every start
of a guest on host B while host A, where it ran, was neither fenced nor had reported it stopped,
every fence of a healthy host (one not dead, nor frozen or cut longer than `silence_s`: the
silence limit less one heartbeat interval, since its last heartbeat may have left up to one
interval before the freeze), the guests
not running at the end, the time to converge after the last fault, and the longest gap between
the HA runner's ticks. Pure functions over records: tests/chaos/test_watch.py feeds it by hand.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPENS = {"start"}
CLOSES = {"destroy", "shutdown", "migrate-out"}
LIFECYCLE_OPEN = {"started"}
LIFECYCLE_CLOSE = {"stopped", "crashed", "migrated"}
TRACEBACK = "Traceback (most recent call last):"


@dataclass
class Interval:
    """A guest running on one host's agent incarnation from `start` to `end`."""

    guest: str
    host: str
    pid: int
    start: float
    end: float | None = None
    # how it ended: "reported" (the agent itself stopped it: shutdown, destroy, migrated away),
    # "died" (the agent process was killed or exited), None (still running at the end)
    how: str | None = None
    by_start: bool = True  # begun by a start command (not found running at a connection)

    def contains(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t < self.end)


@dataclass(frozen=True)
class Overlap:
    guest: str
    hosts: tuple[str, str]
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class EarlyStart:
    guest: str
    host: str  # where it was started
    at: float
    previous: str  # where it ran before, neither fenced nor reported stopped
    previous_state: str  # "running" or "dead" (killed, but nobody proved it)


@dataclass(frozen=True)
class HealthyFence:
    host: str
    at: float
    action: str


@dataclass
class Report:
    intervals: list[Interval]
    double_runs: list[Overlap]
    early_starts: list[EarlyStart]
    healthy_fenced: list[HealthyFence]
    fences: int
    storm_fences: int
    lost: list[str]
    converge_s: float | None  # None: never converged before the end
    ha_stall_s: float
    ha_stall_at: float | None
    tracebacks: list[str] = field(default_factory=list)
    #: those with a frame in Haven's own code: a failure (Redis away is a warning line there)
    haven_tracebacks: list[str] = field(default_factory=list)

    def safety(self, converge_limit_s: float = 30.0, stall_limit_s: float = 5.0) -> list[str]:
        """The safety findings, one line each; empty when the run is clean."""
        out = []
        if self.double_runs:
            out.append(f"{len(self.double_runs)} double run(s)")
        if self.early_starts:
            out.append(f"{len(self.early_starts)} start(s) before fence")
        if self.healthy_fenced:
            out.append(f"{len(self.healthy_fenced)} healthy host(s) fenced")
        if self.lost:
            out.append(f"{len(self.lost)} guest(s) lost: {', '.join(self.lost)}")
        if self.converge_s is None or self.converge_s > converge_limit_s:
            what = "never" if self.converge_s is None else f"after {self.converge_s:.1f} s"
            out.append(f"converged {what} (limit {converge_limit_s:.0f} s)")
        if self.ha_stall_s > stall_limit_s:
            out.append(f"HA stalled {self.ha_stall_s:.1f} s (limit {stall_limit_s:.0f} s)")
        if self.haven_tracebacks:
            out.append(f"{len(self.haven_tracebacks)} traceback(s) from Haven's code")
        return out


@dataclass
class Windows:
    """When each host counts as failed (dead, or frozen/cut past the silence limit)."""

    failed: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def add(self, host: str, start: float, end: float) -> None:
        if end > start:
            self.failed.setdefault(host, []).append((start, end))

    def is_failed(self, host: str, t: float) -> bool:
        return any(s <= t <= e for s, e in self.failed.get(host, []))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a torn last line (a killed writer) is skipped."""
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def deaths(power: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], float]:
    """(host, pid) -> when that agent process died (killed or exited), the earliest record."""
    out: dict[tuple[str, int], float] = {}
    for r in power:
        if r["event"] in ("off", "exit") and r.get("pid"):
            key = (r["host"], int(r["pid"]))
            out[key] = min(out.get(key, r["t"]), r["t"])
    return out


class _HostRuns:
    """Builds one host's intervals from its trace, record by record."""

    def __init__(self, host: str, wanted: set[str], out: list[Interval]) -> None:
        self.host, self.wanted, self.out = host, wanted, out
        self.open: dict[tuple[int, str], Interval] = {}

    def begin(self, r: Mapping[str, Any], guest: str, by_start: bool) -> None:
        key = (int(r["pid"]), guest)
        if guest in self.wanted and key not in self.open:
            iv = Interval(guest, self.host, int(r["pid"]), float(r["t"]), by_start=by_start)
            self.open[key] = iv
            self.out.append(iv)

    def finish(self, r: Mapping[str, Any], guest: str) -> None:
        iv = self.open.pop((int(r["pid"]), guest), None)
        if iv is not None:
            iv.end, iv.how = max(float(r["t"]), iv.start), "reported"

    def feed(self, r: Mapping[str, Any]) -> None:
        event, guest, state = r["event"], r.get("guest", ""), r.get("state")
        if event in OPENS:
            self.begin(r, guest, True)
        elif event in CLOSES:
            self.finish(r, guest)
        elif event == "lifecycle" and state in LIFECYCLE_OPEN:
            self.begin(r, guest, r.get("detail") != "booted")
        elif event == "lifecycle" and state in LIFECYCLE_CLOSE:
            self.finish(r, guest)
        elif event == "connect":
            for g in r.get("guests", []):
                self.begin(r, g, False)

    def died(self, died: Mapping[tuple[str, int], float]) -> None:
        for (pid, _guest), iv in self.open.items():
            end = died.get((self.host, pid))
            if end is not None:
                iv.end, iv.how = max(end, iv.start), "died"


def intervals(
    traces: Mapping[str, Sequence[Mapping[str, Any]]],
    power: Sequence[Mapping[str, Any]],
    guests: Iterable[str],
) -> list[Interval]:
    """Every interval a cluster guest ran on a host, from the traces and the power log."""
    wanted, died = set(guests), deaths(power)
    out: list[Interval] = []
    for host, records in traces.items():
        runs = _HostRuns(host, wanted, out)
        for r in sorted(records, key=lambda r: r["t"]):
            runs.feed(r)
        runs.died(died)
    out.sort(key=lambda iv: (iv.start, iv.host))
    return out


def double_runs(ivs: Sequence[Interval], end: float) -> list[Overlap]:
    out = []
    by_guest: dict[str, list[Interval]] = {}
    for iv in ivs:
        by_guest.setdefault(iv.guest, []).append(iv)
    for guest, runs in sorted(by_guest.items()):
        for i, a in enumerate(runs):
            for b in runs[i + 1 :]:
                if a.host == b.host:
                    continue
                lo = max(a.start, b.start)
                hi = min(end if a.end is None else a.end, end if b.end is None else b.end)
                if hi > lo:
                    out.append(Overlap(guest, (a.host, b.host), lo, hi))
    return out


def early_starts(ivs: Sequence[Interval], power: Sequence[Mapping[str, Any]]) -> list[EarlyStart]:
    """Starts on B while the guest's last run on another host A was not proven over: A neither
    reported it stopped, nor was fenced (a fence done) since that run began, nor booted afresh
    after it died (a new agent reports what runs there)."""
    fenced: dict[str, list[float]] = {}
    booted: dict[str, list[float]] = {}
    for r in power:
        if r["event"] == "fence-done" and r.get("result", 0) == 0:
            fenced.setdefault(r["host"], []).append(r["t"])
        elif r["event"] == "boot":
            booted.setdefault(r["host"], []).append(r["t"])
    out = []
    for b in ivs:
        if not b.by_start:
            continue
        t = b.start
        previous: dict[str, Interval] = {}
        for a in ivs:
            if (
                a.guest == b.guest
                and a.host != b.host
                and a.start < t
                and (a.host not in previous or a.start > previous[a.host].start)
            ):
                previous[a.host] = a
        for host, a in sorted(previous.items()):
            if a.end is not None and a.end <= t and a.how == "reported":
                continue
            if any(a.start <= f <= t for f in fenced.get(host, [])):
                continue
            if a.end is not None and any(a.end <= s <= t for s in booted.get(host, [])):
                continue
            state = "running" if a.end is None or a.end > t else "dead"
            out.append(EarlyStart(b.guest, b.host, t, host, state))
    return out


#: A host that was dead, or frozen or cut longer than the silence limit, counts as failed (not
#: healthy) for fences that begin up to this long after it came back: the engine decided the
#: fence while it was failed, and a fence once decided runs until the engine gives up on it
#: (`Settings.fence_timeout_s`); fencing is never called off because the host came back.
FENCE_GRACE_S = 20.0


def failure_windows(
    power: Sequence[Mapping[str, Any]],
    end: float,
    silence_s: float,
    grace_s: float,
    resume_grace_s: float | None = None,
) -> Windows:
    """A host is failed while no agent of it lives (power off, killed, exited: from the death to
    the next boot), and while frozen or cut off for longer than the silence limit; each window
    lasts `grace_s` longer (a fence decided a moment before the host came back is no error),
    a freeze or cut that ends without a fence `resume_grace_s` longer (the fence decided during
    it still runs: `FENCE_GRACE_S`)."""
    resume_grace = grace_s if resume_grace_s is None else resume_grace_s
    w = Windows()
    died = deaths(power)
    boots: dict[str, list[tuple[float, int]]] = {}
    paused: list[tuple[str, str, float, int]] = []  # host, "stop"/"cut", since, pid
    for r in sorted(power, key=lambda r: r["t"]):
        host, event, pid = r["host"], r["event"], int(r.get("pid") or 0)
        if event == "boot":
            boots.setdefault(host, []).append((r["t"], pid))
        elif event in ("stop", "cut"):
            paused.append((host, event, r["t"], pid))
        elif event in ("cont", "restore"):
            kind = "stop" if event == "cont" else "cut"
            for p in paused:
                if p[0] == host and p[1] == kind and (kind == "cut" or p[3] == pid):
                    paused.remove(p)
                    if r["t"] - p[2] > silence_s:
                        w.add(host, p[2] + silence_s, r["t"] + resume_grace)
                    break
    for host, _kind, began, pid in paused:  # killed while frozen, or never resumed
        w.add(host, began + silence_s, died.get((host, pid), end) + grace_s)
    for host, seq in boots.items():
        for i, (_boot_t, pid) in enumerate(seq):
            death = died.get((host, pid))
            if death is None:
                continue
            nxt = seq[i + 1][0] if i + 1 < len(seq) else end
            w.add(host, death, nxt + grace_s)
    # a host powered off before its first boot (or a death record without a boot record)
    for (host, pid), death in died.items():
        if not any(p == pid for _t, p in boots.get(host, [])):
            later = [t for t, _p in boots.get(host, []) if t > death]
            w.add(host, death, (min(later) if later else end) + grace_s)
    return w


def fences(power: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in power if r["event"] == "fence-begin"]


def healthy_fenced(power: Sequence[Mapping[str, Any]], windows: Windows) -> list[HealthyFence]:
    return [
        HealthyFence(r["host"], r["t"], str(r.get("action", "")))
        for r in fences(power)
        if not windows.is_failed(r["host"], r["t"])
    ]


def storm_fences(power: Sequence[Mapping[str, Any]], windows: Windows, hosts: Sequence[str]) -> int:
    """Fences begun while more than half of the hosts counted as failed (the storm guard's case)."""
    return sum(
        1
        for r in fences(power)
        if sum(windows.is_failed(h, r["t"]) for h in hosts) * 2 > len(hosts)
    )


def running_at(ivs: Sequence[Interval], t: float) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for iv in ivs:
        if iv.contains(t):
            out.setdefault(iv.guest, []).append(iv.host)
    return out


def converged_at(ivs: Sequence[Interval], t: float, guests: Iterable[str]) -> bool:
    running = running_at(ivs, t)
    return all(len(running.get(g, [])) == 1 for g in guests)


def converge_time(
    ivs: Sequence[Interval], guests: Sequence[str], since: float, end: float
) -> float | None:
    """Seconds from `since` until every guest runs exactly once and stays so until `end`."""
    points = sorted(
        {since}
        | {iv.start for iv in ivs if since < iv.start <= end}
        | {iv.end for iv in ivs if iv.end is not None and since < iv.end <= end}
    )
    settled: float | None = None
    for p in points:
        if converged_at(ivs, p, guests):
            if settled is None:
                settled = p
        else:
            settled = None
    return None if settled is None else settled - since


def longest_gap(ticks: Sequence[float], start: float, end: float) -> tuple[float, float | None]:
    """The longest time without a runner tick in [start, end], and when it began."""
    points = sorted([start, *(t for t in ticks if start <= t <= end), end])
    best, at = 0.0, None
    for a, b in itertools.pairwise(points):
        if b - a > best:
            best, at = b - a, a
    return best, at


_TB_END = re.compile(r"^\S")
#: the lines that join one exception to the next in a chained traceback
CHAINED = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+)')
#: the project's own packages: a frame there makes a traceback Haven's
HAVEN_PACKAGES = ("console", "agent", "deploy")


def haven_file(path: str) -> str:
    """The project-relative path of `path` when it is Haven's own code ("" for a library's:
    celery, kombu, redis, the standard library; Haven installed as a package counts)."""
    parts = path.split("/")
    libs = [i for i, part in enumerate(parts) if part in ("site-packages", "dist-packages")]
    if libs:
        rest = parts[libs[-1] + 1 :]
        return "/".join(rest) if rest and rest[0] in HAVEN_PACKAGES else ""
    if path.startswith("<") or re.search(r"/lib/python\d", path):
        return ""  # the standard library, <frozen runpy>
    for i, part in enumerate(parts[:-1]):
        if part in HAVEN_PACKAGES:
            return "/".join(parts[i:])
    return ""


@dataclass(frozen=True)
class Logged:
    """One logged traceback (a chain of exceptions counts once): its log, its last exception,
    and the innermost frame in Haven's own code ("" when only libraries' frames)."""

    log: str
    exception: str
    haven_frame: str = ""

    def __str__(self) -> str:
        where = f" (at {self.haven_frame})" if self.haven_frame else ""
        return f"{self.log}: {self.exception}{where}"


def logged_tracebacks(logs: Mapping[str, str]) -> list[Logged]:
    """Every traceback in the logs, in order, a chained one ("During handling of the above
    exception ...") once, with the exception it ended in."""
    out: list[Logged] = []
    for name, text in logs.items():
        lines = text.splitlines()
        i = 0
        while i < len(lines):
            if TRACEBACK not in lines[i]:
                i += 1
                continue
            exc, frame = "(truncated)", ""
            while True:  # one traceback of the chain
                j = i + 1
                while j < len(lines) and not _TB_END.match(lines[j]):
                    m = _FRAME.match(lines[j])
                    if m and haven_file(m.group(1)):
                        frame = f"{haven_file(m.group(1))}:{m.group(2)}"
                    j += 1
                exc = lines[j].strip()[:300] if j < len(lines) else "(truncated)"
                k = j + 1
                while k < len(lines) and not lines[k].strip():
                    k += 1
                if k < len(lines) and lines[k].strip() in CHAINED:
                    k += 1
                    while k < len(lines) and TRACEBACK not in lines[k]:
                        k += 1
                    if k < len(lines):
                        i = k
                        continue
                i = j + 1
                break
            out.append(Logged(name, exc, frame))
    return out


def tracebacks(logs: Mapping[str, str]) -> list[str]:
    """Every traceback in the logs, as 'log: last exception', in order (a chain once)."""
    return [str(t) for t in logged_tracebacks(logs)]


def analyse(
    traces: Mapping[str, Sequence[Mapping[str, Any]]],
    power: Sequence[Mapping[str, Any]],
    guests: Sequence[str],
    hosts: Sequence[str],
    *,
    last_fault: float,
    end: float,
    ticks: Sequence[float] = (),
    ticks_from: float | None = None,
    silence_s: float = 2.0,
    grace_s: float = 2.0,
    resume_grace_s: float = FENCE_GRACE_S,
    logs: Mapping[str, str] | None = None,
    enabled: Sequence[str] | None = None,
) -> Report:
    """`guests` are watched for double runs and early starts; `enabled` (default: all of them)
    must each run once at the end, and count for convergence."""
    ivs = intervals(traces, power, guests)
    wanted = list(guests if enabled is None else enabled)
    windows = failure_windows(power, end, silence_s, grace_s, resume_grace_s)
    running = running_at(ivs, end - 1e-6)
    stall, stall_at = longest_gap(ticks, ticks_from if ticks_from is not None else end, end)
    logged = logged_tracebacks(logs or {})
    return Report(
        intervals=ivs,
        double_runs=double_runs(ivs, end),
        early_starts=early_starts(ivs, power),
        healthy_fenced=healthy_fenced(power, windows),
        fences=len(fences(power)),
        storm_fences=storm_fences(power, windows, hosts),
        lost=sorted(g for g in wanted if not running.get(g)),
        converge_s=converge_time(ivs, wanted, last_fault, end),
        ha_stall_s=stall,
        ha_stall_at=stall_at,
        tracebacks=[str(t) for t in logged],
        haven_tracebacks=[str(t) for t in logged if t.haven_frame],
    )
