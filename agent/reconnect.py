"""A Celery consumer that reconnects to the broker within a second or two of its return.

Celery's consumer retries a lost broker connection through kombu's
``Connection.ensure_connection`` with kombu's default pauses: 2 s, then 4, 6 ... up to 30 s
between attempts. After a Redis restart that keeps a consumer from its queue for up to 30 s
more than the outage itself: an agent that does not see its commands, a console worker that
does not see the HA runner's ticks. This consumer (``worker_consumer`` of both apps) retries
after 0.2 s, then 0.5 s more each time, never more than 2 s apart, forever as before.
"""

from __future__ import annotations

import functools
from typing import Any

from celery.worker.consumer import Consumer  # type: ignore[import-untyped]

#: kombu's ensure_connection pauses: the first, the growth per attempt, the longest
INTERVALS = {"interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0}
CONSUMER = "agent.reconnect:FastReconnectConsumer"


class FastReconnectConsumer(Consumer):  # type: ignore[misc]
    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(conn.ensure_connection, **INTERVALS)
        return super().ensure_connected(conn)
