"""The shutdown hook (agent/shutdown.py): announce once on the host's own inbound list, then
wait, bounded, until no guest runs here; its exit status says how it went."""

from __future__ import annotations

from typing import Any

from agent import protocol
from agent.shutdown import drain


class Sent:
    def __init__(self, fail: bool = False) -> None:
        self.messages: list[dict[str, Any]] = []
        self.fail = fail

    def send(self, message: dict[str, Any]) -> None:
        if self.fail:
            raise ConnectionError("broker away")
        self.messages.append(message)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_announces_once_then_waits_until_the_guests_moved_away() -> None:
    sent, clock = Sent(), Clock()
    views = iter([["guest1", "guest2"], ["guest2"], ["guest2"], []])
    code = drain("et-virt05", sent, lambda: next(views), 60, clock=clock.now, sleep=clock.sleep)
    assert code == 0 and clock.t == 3.0
    [message] = sent.messages
    event = protocol.message_from_dict(message)  # a valid protocol message
    assert isinstance(event, protocol.Event)
    assert (event.host, event.event, event.kind) == ("et-virt05", "shutdown", "event")


def test_gives_up_at_the_timeout_and_when_the_console_cannot_be_told() -> None:
    clock = Clock()
    code = drain("h", Sent(), lambda: ["stuck"], 10, clock=clock.now, sleep=clock.sleep)
    assert code == 1 and clock.t == 10.0  # bounded: the shutdown goes on
    polled: list[int] = []
    code = drain("h", Sent(fail=True), lambda: polled.append(1) or ["g"], 10)
    assert code == 2 and polled == []  # nothing waited for


def test_with_no_guest_left_the_host_leaves_its_shared_storage_before_the_stack_stops(
    monkeypatch: Any,
) -> None:
    """Drained (or the console unreachable, but nothing running): the shared storage is left
    by the hook itself; a guest still running keeps it (its disk may be there)."""
    from agent import shutdown

    left: list[str] = []
    running = [["guest1"]]
    monkeypatch.setattr(shutdown, "running_guests", lambda uri: running[0])
    monkeypatch.setattr(shutdown, "drain", lambda host, sender, guests, timeout: 1)
    monkeypatch.setattr(shutdown, "RedisSender", lambda url, host: Sent())
    monkeypatch.setattr(
        shutdown.LinuxStorage, "leave_shared_storage", lambda self: left.append("x") or ["ok"]
    )
    argv = ["--host", "sv3", "--broker", "redis://h:1/0", "--timeout", "1"]
    monkeypatch.setattr(Sent, "close", lambda self: None, raising=False)
    assert shutdown.main(argv) == 1 and left == []  # guest1 still runs here
    running[0] = []
    assert shutdown.main(argv) == 1 and left == ["x"]
