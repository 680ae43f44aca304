"""The chaos watcher's arithmetic on hand-made traces (deploy/bench/chaos_watch.py)."""

from __future__ import annotations

from typing import Any

import pytest

from deploy.bench import chaos_watch as w

HOSTS = ("h1", "h2", "h3")


def tr(t: float, event: str, guest: str = "", pid: int = 0, **extra: Any) -> dict[str, Any]:
    return {"t": t, "pid": pid, "event": event, "guest": guest, **extra}


def pw(t: float, host: str, event: str, **extra: Any) -> dict[str, Any]:
    return {"t": t, "host": host, "event": event, **extra}


BOOTS = [
    pw(0.0, "h1", "boot", pid=11),
    pw(0.0, "h2", "boot", pid=21),
    pw(0.0, "h3", "boot", pid=31),
]


def analyse(
    traces: dict[str, list[dict[str, Any]]], power: list[dict[str, Any]], **kw: Any
) -> w.Report:
    args: dict[str, Any] = {"last_fault": 10.0, "end": 60.0, **kw}
    return w.analyse(traces, BOOTS + power, ["g1", "g2"], HOSTS, **args)


def clean() -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """h1 loses power at 10 (killed), is fenced at 14, g1 starts on h2 at 15; g2 stays on h3."""
    traces = {
        "h1": [tr(0.5, "connect", pid=11, guests=[]), tr(1.0, "start", "g1", 11)],
        "h2": [tr(0.5, "connect", pid=21, guests=[]), tr(15.0, "start", "g1", 21)],
        "h3": [tr(0.5, "connect", pid=31, guests=[]), tr(1.0, "start", "g2", 31)],
    }
    power = [
        pw(10.0, "h1", "off", by="chaos", pid=11),
        pw(13.9, "h1", "fence-begin", action="reboot"),
        pw(14.0, "h1", "fence-done", action="reboot", result=0),
    ]
    return traces, power


def test_a_clean_trace_passes() -> None:
    report = analyse(*clean())
    assert report.safety() == []
    assert (report.double_runs, report.early_starts, report.healthy_fenced) == ([], [], [])
    assert report.lost == [] and report.fences == 1
    assert report.converge_s == pytest.approx(5.0)  # g1 ran nowhere from 10 to 15
    g1 = [iv for iv in report.intervals if iv.guest == "g1"]
    assert [(iv.host, iv.start, iv.end, iv.how) for iv in g1] == [
        ("h1", 1.0, 10.0, "died"),
        ("h2", 15.0, None, None),
    ]


def test_a_double_run_is_detected() -> None:
    traces, power = clean()
    traces["h2"][1] = tr(8.0, "start", "g1", 21)  # started while h1 still ran it
    report = analyse(traces, power)
    assert [(o.guest, o.hosts, o.start, o.end) for o in report.double_runs] == [
        ("g1", ("h1", "h2"), 8.0, 10.0)
    ]
    assert report.double_runs[0].seconds == pytest.approx(2.0)
    assert [(e.guest, e.host, e.previous, e.previous_state) for e in report.early_starts] == [
        ("g1", "h2", "h1", "running")
    ]
    assert "1 double run(s)" in report.safety()


def test_a_start_before_the_fence_is_detected_though_the_old_copy_was_dead() -> None:
    traces, power = clean()
    traces["h2"][1] = tr(12.0, "start", "g1", 21)  # h1 was dead, but fenced only at 14
    report = analyse(traces, power)
    assert report.double_runs == []
    assert [(e.guest, e.host, e.at, e.previous_state) for e in report.early_starts] == [
        ("g1", "h2", 12.0, "dead")
    ]
    assert "1 start(s) before fence" in report.safety()


def test_a_stop_reported_by_the_old_host_allows_the_start() -> None:
    traces, _power = clean()
    traces["h1"].append(tr(5.0, "shutdown", "g1", 11))  # relocated by a person
    traces["h2"][1] = tr(5.5, "start", "g1", 21)
    report = analyse(traces, [])
    assert report.early_starts == [] and report.double_runs == []


def test_a_fresh_boot_of_the_old_host_counts_as_its_report() -> None:
    traces, _power = clean()
    power = [pw(10.0, "h1", "off", by="chaos", pid=11), pw(12.0, "h1", "boot", pid=12)]
    traces["h1"].append(tr(12.5, "connect", pid=12, guests=[]))
    traces["h2"][1] = tr(13.0, "start", "g1", 21)
    assert analyse(traces, power).early_starts == []


def test_healthy_and_failed_fences() -> None:
    traces, power = clean()
    power += [
        # h3 frozen 20..28: fenced at 24 (4 s > 2 s) is right; at 21.5 it was healthy
        pw(20.0, "h3", "stop", pid=31),
        pw(21.5, "h3", "fence-begin", action="reboot"),
        pw(24.0, "h3", "fence-begin", action="reboot"),
        pw(28.0, "h3", "cont", pid=31),
        # h2 never frozen nor dead: a fence of it is a healthy host fenced
        pw(40.0, "h2", "fence-begin", action="reboot"),
        # a fence a moment after h3 came back is within the grace
        pw(29.0, "h3", "fence-begin", action="reboot"),
    ]
    report = analyse(traces, power)
    assert sorted((f.host, f.at) for f in report.healthy_fenced) == [("h2", 40.0), ("h3", 21.5)]
    assert report.fences == 5


def test_a_frozen_host_killed_by_its_fence_is_failed_until_it_boots_again() -> None:
    traces, power = clean()
    power += [
        pw(20.0, "h3", "stop", pid=31),
        pw(24.0, "h3", "fence-begin", action="reboot"),
        pw(24.1, "h3", "off", by="fence", pid=31),
        pw(26.0, "h3", "boot", pid=32),
        pw(45.0, "h3", "fence-begin", action="reboot"),  # long after the reboot: healthy
    ]
    report = analyse(traces, power)
    assert [(f.host, f.at) for f in report.healthy_fenced] == [("h3", 45.0)]
    g2 = next(iv for iv in report.intervals if iv.guest == "g2")
    assert (g2.end, g2.how) == (24.1, "died")
    assert report.lost == ["g2"]  # nobody restarted it


def test_storm_fences_are_counted() -> None:
    traces, power = clean()
    power += [
        pw(20.0, "h2", "stop", pid=21),
        pw(20.0, "h3", "stop", pid=31),
        pw(25.0, "h2", "fence-begin", action="reboot"),
        pw(27.0, "h2", "cont", pid=21),
        pw(27.0, "h3", "cont", pid=31),
    ]
    # h1 dead until its boot? it never booted again: 3 of 3 failed at 25
    assert analyse(traces, power).storm_fences == 1


def test_not_converged_and_lost() -> None:
    traces, power = clean()
    traces["h3"].append(tr(30.0, "destroy", "g2", 31))
    report = analyse(traces, power)
    assert report.lost == ["g2"] and report.converge_s is None
    assert any("never" in line for line in report.safety())


def test_convergence_must_last_until_the_end() -> None:
    traces, power = clean()
    traces["h3"] += [tr(30.0, "destroy", "g2", 31), tr(31.5, "start", "g2", 31)]
    report = analyse(traces, power)
    assert report.converge_s == pytest.approx(21.5)  # from 10 to 31.5
    assert report.safety() == []  # within the 30 s limit
    assert report.safety(converge_limit_s=20) == ["converged after 21.5 s (limit 20 s)"]


def test_ha_stall_and_tracebacks() -> None:
    traces, power = clean()
    ticks = [float(t) for t in range(61) if not 20 < t < 29]
    report = analyse(
        traces,
        power,
        ticks=ticks,
        ticks_from=0.0,
        logs={"worker.log": "ok\nTraceback (most recent call last):\n  File x\nKeyError: 'a'\nok"},
    )
    assert report.ha_stall_s == pytest.approx(9.0) and report.ha_stall_at == 20.0
    assert report.tracebacks == ["worker.log: KeyError: 'a'"]
    assert "HA stalled 9.0 s (limit 5 s)" in report.safety()


def test_a_torn_last_line_is_skipped(tmp_path: Any) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"t": 1, "event": "start"}\n{"t": 2, "ev')
    assert w.read_jsonl(path) == [{"t": 1, "event": "start"}]


def test_a_host_fenced_while_frozen_then_frozen_again() -> None:
    """A second freeze of the rebooted host must not hide the first (fenced while frozen)."""
    traces, power = clean()
    power += [
        pw(20.0, "h3", "stop", pid=31),
        pw(23.9, "h3", "fence-begin", action="reboot"),
        pw(23.95, "h3", "off", by="fence", pid=31),
        pw(25.5, "h3", "boot", pid=32),
        pw(30.0, "h3", "stop", pid=32),
        pw(31.0, "h3", "fence-begin", action="reboot"),  # 1 s into the second freeze: healthy
        pw(36.0, "h3", "cont", pid=32),
    ]
    report = analyse(traces, power)
    assert [(f.host, f.at) for f in report.healthy_fenced] == [("h3", 31.0)]


def test_only_enabled_guests_must_run_at_the_end() -> None:
    traces, power = clean()
    traces["h3"].append(tr(30.0, "shutdown", "g2", 31))  # a person stopped g2
    report = analyse(traces, power, enabled=["g1"])
    assert report.lost == [] and report.converge_s == pytest.approx(5.0)
    assert analyse(traces, power).lost == ["g2"]


def test_a_fence_decided_during_a_long_freeze_may_run_after_the_host_resumed() -> None:
    """Frozen longer than the silence limit = failed; its fence still runs when the host is
    back (fencing is never called off), so it is no healthy host fenced. A short freeze is."""
    traces, power = clean()
    power += [
        pw(20.0, "h3", "stop", pid=31),
        pw(23.3, "h3", "cont", pid=31),  # frozen 3.3 s: past the limit
        pw(27.1, "h3", "fence-begin", action="reboot"),  # 3.8 s after it resumed
        pw(60.0, "h2", "stop", pid=21),
        pw(61.5, "h2", "cont", pid=21),  # 1.5 s: within the limit
        pw(62.0, "h2", "fence-begin", action="reboot"),
    ]
    report = analyse(traces, power)
    assert [(f.host, f.at) for f in report.healthy_fenced] == [("h2", 62.0)]


CHAINED_OURS = """2026-12-01 21:32:50,304 ERROR haven.drain: runner of cluster 1 failed
Traceback (most recent call last):
  File "/srv/.venv/lib/python3.11/site-packages/redis/connection.py", line 787, in _connect
    sock.connect(socket_address)
ConnectionRefusedError: [Errno 111] Connection refused

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/srv/haven/console/ha/drain.py", line 181, in _run
    self._run_cluster(cluster_id, self.store)
  File "/srv/haven/console/ha/store.py", line 181, in lock
    taken = bool(self.r.set(key, token, nx=True, px=int(ttl_s * 1000)))
  File "/srv/.venv/lib/python3.11/site-packages/redis/connection.py", line 397, in connect
    raise ConnectionError(self._error_message(e))
redis.exceptions.ConnectionError: Error 111 connecting to 127.0.0.1:6410. Connection refused.
2026-12-01 21:32:51,826 INFO haven.events: engine ...
"""

CHAINED_CELERY = """[2026-12-01 22:46:35,646: ERROR/MainProcess] Message Error: Couldn't apply
Traceback (most recent call last):
  File "/srv/.venv/lib/python3.11/site-packages/kombu/transport/virtual/base.py", line 961
    return self._avail_channels.pop()
IndexError: pop from empty list

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/contextlib.py", line 137, in __enter__
  File "/srv/.venv/lib/python3.11/site-packages/celery/beat.py", line 289, in apply_entry
celery.beat.SchedulingError: Couldn't apply scheduled task ha-runner: Error 111
"""


def test_a_chained_traceback_counts_once_and_haven_s_own_fail_the_run() -> None:
    traces, power = clean()
    report = analyse(traces, power, logs={"ingest.log": CHAINED_OURS, "beat.log": CHAINED_CELERY})
    assert report.tracebacks == [
        "ingest.log: redis.exceptions.ConnectionError: Error 111 connecting to 127.0.0.1:6410. "
        "Connection refused. (at console/ha/store.py:181)",
        "beat.log: celery.beat.SchedulingError: Couldn't apply scheduled task ha-runner: Error 111",
    ]
    assert report.haven_tracebacks == report.tracebacks[:1]
    assert report.safety() == ["1 traceback(s) from Haven's code"]
    # a library's traceback alone is listed, not a failure
    report = analyse(traces, power, logs={"beat.log": CHAINED_CELERY})
    assert len(report.tracebacks) == 1 and report.safety() == []


@pytest.mark.parametrize(
    ("path", "haven"),
    [
        ("/work/wt/engine/console/ha/drain.py", "console/ha/drain.py"),
        ("/opt/haven/.venv/lib/python3.11/site-packages/agent/main.py", "agent/main.py"),
        ("/srv/deploy/.venv/lib/python3.11/site-packages/redis/client.py", ""),
        ("/srv/.venv/lib/python3.11/site-packages/celery/app/agent/x.py", ""),
        ("/root/.pyenv/versions/3.11.7/lib/python3.11/contextlib.py", ""),
        ("<frozen runpy>", ""),
    ],
)
def test_haven_file(path: str, haven: str) -> None:
    assert w.haven_file(path) == haven
