"""Redis (the broker and the heartbeat store) away for a moment: one warning line, no traceback.

Redis restarts (a crash, an upgrade, ``systemctl restart haven-redis``): for a second or two
every call refuses, finds its connection closed, or gets ``LOADING`` while Redis reads its
append-only file back. Nothing is lost that the next tick, the next check or the engine's
timeouts do not redo, so the console's loops say so in one line and carry on; any other error
still logs its traceback.
"""

from __future__ import annotations

import logging

import redis
from kombu.exceptions import OperationalError

#: what Redis being away or restarting raises: refused or closed connections and LOADING
#: (redis' BusyLoadingError is one of its ConnectionErrors), timeouts, the socket's own errors,
#: and kombu's wrapping of them when a message cannot be published
UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    OperationalError,
    ConnectionError,
)


def unavailable(exc: BaseException) -> str:
    """The cause in one line when ``exc`` says Redis is away or restarting, else ""."""
    if not isinstance(exc, UNAVAILABLE):
        return ""
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return f"Redis unavailable ({detail})"


def log_failure(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """``what`` failed because of ``exc``: a warning with the cause when Redis is away, else
    the error with its traceback."""
    cause = unavailable(exc)
    if cause:
        logger.warning("%s: %s", what, cause)
    else:
        logger.error("%s", what, exc_info=exc)


class OneLineWhenAway(logging.Filter):
    """On a library's logger that logs a lost broker connection with its traceback (kombu's
    "Couldn't ack ..., reason:..." at CRITICAL on the worker's ``celery.worker.request`` when
    Redis goes away between a task's delivery and its ack; the message stays in Redis's unacked
    set): one warning line with the cause instead. Any other error passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        why = unavailable(exc) if exc is not None else ""
        if why:
            what = record.getMessage().split(", reason:")[0]
            record.msg, record.args = "%s: %s", (what, why)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


#: libraries' loggers that log a Redis restart with a traceback (see OneLineWhenAway)
QUIETED = ("celery.worker.request",)


def quiet_libraries() -> None:
    """Install `OneLineWhenAway` on `QUIETED` (once; the console's Celery app calls it)."""
    for name in QUIETED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OneLineWhenAway) for f in logger.filters):
            logger.addFilter(OneLineWhenAway())
