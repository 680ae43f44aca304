"""The lab watcher's poller turns what it sees into trace records (deploy/bench/chaos_lab.py):
hosts are polled in turn, so a guest that moves between two polls is no double run, and a guest
seen again on its old host after the new one saw it is one."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy"))

from bench import chaos_lab, chaos_watch  # noqa: E402


def run(seen: dict[str, list[set[str] | None]]) -> chaos_watch.Report:
    """Poll rounds as _loop does them (host after host), one second per poll."""
    hosts = SimpleNamespace(uris={h: "" for h in seen})  # what is seen is recorded by hand
    poller = chaos_lab.Poller(hosts, dict.fromkeys(seen, 1))
    t = 0.0
    for i in range(len(next(iter(seen.values())))):
        for host in seen:
            poller._record(host, seen[host][i], t)
            t += 1
    power = [{"t": 0.0, "host": h, "event": "boot", "pid": 1} for h in seen]
    return chaos_watch.analyse(poller.traces, power, ["g"], list(seen), last_fault=0.0, end=100.0)


def test_a_move_between_two_polls_is_no_double_run() -> None:
    # round 1: a runs g; round 2: g moved to b (a polled first, then b)
    report = run({"a": [{"g"}, {"g"}, set(), set()], "b": [set(), {"g"}, {"g"}, {"g"}]})
    assert report.double_runs == []


def test_a_guest_seen_on_a_after_b_saw_it_is_a_double_run() -> None:
    # round 2: a (t=2) then b (t=3) both see g, as a migration between the two polls would;
    # round 3: a sees it again (t=4), after b did: two copies from 3 to 4
    report = run({"a": [{"g"}, {"g"}, {"g"}, set()], "b": [set(), {"g"}, {"g"}, {"g"}]})
    assert [o.hosts for o in report.double_runs] == [("a", "b")]
    assert len(report.early_starts) == 1


def test_an_unreachable_host_keeps_what_it_ran() -> None:
    report = run({"a": [{"g"}, None, None, None], "b": [set(), set(), {"g"}, {"g"}]})
    assert [o.hosts for o in report.double_runs] == [("a", "b")]  # nobody proved it gone
