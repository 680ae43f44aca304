"""Redis away or restarting (console/core/broker.py): the console's loops say so in one warning
line with the cause, no traceback, and carry on; the next tick works. The errors are real ones:
a RedisStore and a publish against a port where nothing listens."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest
import redis
from celery.beat import PersistentScheduler, SchedulingError
from kombu.exceptions import OperationalError

from console.beat import Scheduler
from console.celery import app, use_broker
from console.core import broker
from console.ha import runner
from console.ha.models import EngineState
from console.ha.store import MemoryStore, RedisStore
from console.jobs import services as jobs
from console.jobs import transport as transport_module
from console.jobs.transport import CeleryTransport, use_transport
from tests.console import factories as f


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


def _away() -> RedisStore:
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    return RedisStore(redis.Redis.from_url(url, socket_connect_timeout=0.5, decode_responses=True))


def _one_line(caplog: pytest.LogCaptureFixture, logger: str) -> logging.LogRecord:
    records = [r for r in caplog.records if r.name == logger]
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    (record,) = records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "\n" not in record.getMessage()
    return record


@pytest.mark.parametrize(
    "exc",
    [
        redis.ConnectionError("Error 111 connecting to 127.0.0.1:6410. Connection refused."),
        redis.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.TimeoutError("Timeout reading from socket"),
        OperationalError("Error 111 connecting to 127.0.0.1:6410. Connection refused."),
        ConnectionRefusedError(111, "Connection refused"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_redis_away_is_one_line(exc: BaseException) -> None:
    why = broker.unavailable(exc)
    assert why.startswith("Redis unavailable (") and "\n" not in why


def test_other_errors_keep_their_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert broker.unavailable(KeyError("a")) == ""
    assert broker.unavailable(redis.ResponseError("WRONGTYPE")) == ""
    log = logging.getLogger("haven.test")
    with caplog.at_level(logging.WARNING):
        broker.log_failure(log, "it failed", KeyError("a"))
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None


@pytest.mark.django_db
def test_a_tick_with_redis_away_warns_and_the_next_one_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = f.ClusterFactory()
    with caplog.at_level(logging.WARNING):
        assert runner.run(cluster.pk, _away()) == []
    record = _one_line(caplog, "haven.runner")
    assert f"tick of cluster {cluster.pk} not made: Redis unavailable (" in record.getMessage()
    assert "Connection refused" in record.getMessage()
    assert not EngineState.objects.filter(cluster=cluster, ticks__gt=0).exists()
    # Redis is back: the next tick decides
    reports = runner.run(cluster.pk, MemoryStore())
    assert len(reports) == 1
    assert EngineState.objects.get(cluster=cluster).ticks == 1


def test_a_command_not_sent_is_one_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport_module, "SEND_RETRY", {"max_retries": 1, "interval_start": 0})
    previous = app.conf.broker_url
    use_broker(f"redis://127.0.0.1:{_closed_port()}/0")
    try:
        command = {"kind": "define", "id": "x1", "args": {}}
        with use_transport(CeleryTransport()), caplog.at_level(logging.WARNING):
            jobs._send_all([("h1", command, command)])
    finally:
        use_broker(previous)
    record = _one_line(caplog, "haven.jobs")
    assert record.getMessage().startswith("could not send define to h1: Redis unavailable (")


def _failing(exc: BaseException) -> Any:
    def apply_async(self: Any, entry: Any, producer: Any = None, **kw: Any) -> Any:
        try:
            raise exc
        except Exception as inner:
            raise SchedulingError(f"Couldn't apply scheduled task {entry.name}: {inner}") from inner

    return apply_async


class Entry:
    name = "ha-runner"


def test_beat_cannot_send_a_tick_one_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    beat = Scheduler(app, lazy=True, schedule_filename=str(tmp_path / "schedule"))
    loading = redis.BusyLoadingError("Redis is loading the dataset in memory")
    monkeypatch.setattr(PersistentScheduler, "apply_async", _failing(loading))
    with caplog.at_level(logging.WARNING):
        assert beat.apply_async(Entry(), advance=False) is None
    record = _one_line(caplog, "haven.beat")
    assert record.getMessage() == (
        "could not send ha-runner: Redis unavailable (Redis is loading the dataset in memory)"
    )
    # anything else is celery's to report, as before
    monkeypatch.setattr(PersistentScheduler, "apply_async", _failing(KeyError("task")))
    with pytest.raises(SchedulingError):
        beat.apply_async(Entry(), advance=False)


class Channel:
    """A channel whose broker went away: kombu's ack raises what redis-py raises."""

    no_ack_consumers = None

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def basic_ack(self, tag: str, multiple: bool = False) -> None:
        raise self.exc


def test_worker_ack_lost_with_redis_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """kombu's Message.ack_log_error, as the worker calls it, on celery's request logger."""
    from kombu.message import Message

    from console import celery as _console_celery  # noqa: F401  (installs the filter)

    logger = logging.getLogger("celery.worker.request")
    gone = redis.ConnectionError("Connection closed by server.")
    with caplog.at_level(logging.WARNING):
        Message(channel=Channel(gone), delivery_tag="t1").ack_log_error(
            logger, (redis.ConnectionError,)
        )
    record = _one_line(caplog, "celery.worker.request")
    assert record.getMessage() == (
        "Couldn't ack 't1': Redis unavailable (Connection closed by server.)"
    )
    caplog.clear()
    # another error keeps kombu's report
    with caplog.at_level(logging.WARNING):
        Message(channel=Channel(KeyError("x")), delivery_tag="t2").ack_log_error(
            logger, (KeyError,)
        )
    (record,) = caplog.records
    assert record.levelno == logging.CRITICAL and record.exc_info is not None


def test_a_command_rides_through_a_redis_restart(tmp_path: Any) -> None:
    """Redis comes back 1.5 s after the send began: the command is in the host's queue."""
    import shutil
    import subprocess
    import threading

    from agent.protocol import agent_queue

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = _closed_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--dir", str(tmp_path)]
    procs: list[subprocess.Popen[bytes]] = []
    timer = threading.Timer(1.5, lambda: procs.append(subprocess.Popen(argv)))
    previous = app.conf.broker_url
    use_broker(f"redis://127.0.0.1:{port}/0")
    try:
        timer.start()
        command = {"kind": "define", "id": "x2", "args": {}}
        CeleryTransport().send("h1", command, command)
        queued = redis.Redis(port=port).llen(agent_queue("h1"))
    finally:
        timer.cancel()
        use_broker(previous)
        for proc in procs:
            proc.kill()
            proc.wait()
    assert procs, "the command was sent before Redis was there"
    assert queued == 1


def test_a_batch_waits_for_redis_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mass start while Redis stays away: the first command waits out the retry, the
    others fail at once (one line each), not the retry's length each."""
    import time

    policy = {"max_retries": 3, "interval_start": 0.5, "interval_step": 0, "interval_max": 0.5}
    monkeypatch.setattr(transport_module, "SEND_RETRY", policy)
    previous = app.conf.broker_url
    use_broker(f"redis://127.0.0.1:{_closed_port()}/0")
    sends = [(f"h{i}", {"kind": "start", "id": f"s{i}", "args": {}}, {}) for i in range(4)]
    began = time.monotonic()
    try:
        with use_transport(CeleryTransport()), caplog.at_level(logging.WARNING):
            jobs._send_all([(h, c, c) for h, c, _ in sends])
    finally:
        use_broker(previous)
    took = time.monotonic() - began
    lines = [r for r in caplog.records if r.name == "haven.jobs"]
    assert [r.getMessage().split(":")[0] for r in lines] == [
        f"could not send start to h{i}" for i in range(4)
    ]
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in lines)
    assert 1.4 <= took < 1.5 * 3, took  # one retry run (3 x 0.5 s), not four


def test_a_batch_of_commands_is_one_round_trip(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mass start's commands reach Redis in one round trip (kombu's publish batch: one
    pipeline), each on its own host's queue, in order, as the agent reads it."""
    import base64
    import json
    import shutil
    import subprocess
    import time

    from redis.connection import Connection

    from agent.protocol import agent_queue

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = _closed_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = subprocess.Popen([*argv, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    r: Any = redis.Redis(port=port)
    for _ in range(100):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    previous = app.conf.broker_url
    use_broker(f"redis://127.0.0.1:{port}/0")
    sends = [(f"h{i % 3}", {"kind": "start", "id": f"s{i}", "args": {"guest": f"g{i}"}}, {})
             for i in range(9)]  # fmt: skip
    trips = 0
    real = Connection.send_packed_command

    def counted(self: Connection, command: Any, check_health: bool = True) -> None:
        nonlocal trips
        if self.port == port:
            trips += 1
        real(self, command, check_health)

    try:
        for host, command, redacted in sends[:3]:  # each queue declared (once a process)
            CeleryTransport().send(host, command, redacted)
        r.delete(*(agent_queue(h) for h in ("h0", "h1", "h2")))
        monkeypatch.setattr(Connection, "send_packed_command", counted)
        CeleryTransport().send_many(sends)
        monkeypatch.undo()
        queued = {h: r.lrange(agent_queue(h), 0, -1)[::-1] for h in ("h0", "h1", "h2")}
    finally:
        use_broker(previous)
        proc.kill()
        proc.wait()
    assert trips == 1
    for i, host in enumerate(("h0", "h1", "h2")):
        bodies = [json.loads(base64.b64decode(json.loads(raw)["body"])) for raw in queued[host]]
        ids = [args[0]["id"] for args, _kw, _embed in bodies]
        assert ids == [f"s{j}" for j in (i, i + 3, i + 6)]
