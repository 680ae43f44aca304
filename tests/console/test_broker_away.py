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
from console.jobs import services as jobs
from console.jobs.transport import CeleryTransport, use_transport
from console.runtime import runner
from console.runtime.models import EngineState
from console.runtime.store import MemoryStore, RedisStore
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


def test_a_command_not_sent_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
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
