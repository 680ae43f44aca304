"""The executor: idempotency by id, per-guest ordering, parallelism across guests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from agent.commands import ordering_key
from agent.executor import Executor
from agent.protocol import Command, Result

from .conftest import Harness, domain_xml, unique


class Recorder:
    """A fake handler that records start/end times; `slow` guests take 0.5 s."""

    def __init__(self, slow: set[str]) -> None:
        self.slow = slow
        self.calls: list[tuple[str, float, float]] = []
        self.lock = threading.Lock()

    def handle(self, cmd: Command) -> Result:
        start = time.monotonic()
        time.sleep(0.5 if cmd.args.get("guest") in self.slow else 0.05)
        with self.lock:
            self.calls.append((cmd.id, start, time.monotonic()))
        return Result("h", cmd.id, cmd.kind, True, {"guest": cmd.args.get("guest")})


def collector() -> tuple[list[Result], Callable[[Result], None]]:
    results: list[Result] = []
    return results, results.append


def test_repeated_id_returns_first_result_without_acting_twice(harness: Harness) -> None:
    name = unique("g")
    harness.submit({"v": 2, "id": "def-1", "kind": "define", "args": {"xml": domain_xml(name)}})
    harness.submit({"v": 2, "id": "start-1", "kind": "start", "args": {"guest": name}})
    harness.wait_results(2)
    harness.run("destroy", guest=name)  # a later, different command
    harness.submit({"v": 2, "id": "start-1", "kind": "start", "args": {"guest": name}})
    results = harness.wait_results(3)
    first, dup = results[1], results[2]
    assert dup.duplicate and not first.duplicate
    assert dup.id == first.id and dup.data == first.data
    state = {g["name"]: g["state"] for g in harness.run("list_guests").data["guests"]}
    assert state[name] == "shutoff"  # not started a second time


def test_duplicate_while_running_is_answered_when_done() -> None:
    rec = Recorder(slow={"a"})
    results, publish = collector()
    ex = Executor("h", rec.handle, publish, ordering_key)
    for _ in range(3):
        ex.submit({"v": 2, "id": "same", "kind": "start", "args": {"guest": "a"}})
    assert ex.wait_idle(5)
    time.sleep(0.05)
    assert len(rec.calls) == 1
    assert [r.duplicate for r in results] == [False, True, True]
    ex.shutdown()


def test_same_guest_is_ordered_other_guests_run_in_parallel() -> None:
    rec = Recorder(slow={"a"})
    results, publish = collector()
    ex = Executor("h", rec.handle, publish, ordering_key, workers=4)
    ex.submit({"v": 2, "id": "a1", "kind": "migrate", "args": {"guest": "a", "dest_uri": "x"}})
    ex.submit({"v": 2, "id": "a2", "kind": "start", "args": {"guest": "a"}})
    ex.submit({"v": 2, "id": "b1", "kind": "start", "args": {"guest": "b"}})
    assert ex.wait_idle(5)
    calls = {cid: (start, end) for cid, start, end in rec.calls}
    assert calls["a2"][0] >= calls["a1"][1]  # a2 waited for a1
    assert calls["b1"][1] < calls["a1"][1]  # b1 did not wait for the long a1
    assert results[0].id == "b1"
    ex.shutdown()
