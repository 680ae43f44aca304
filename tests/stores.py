"""The tests' one way to get a store of their own: a `RedisStore` under a fresh key prefix on
the test Redis (``REDIS_URL``), skipped cleanly without one, its keys deleted afterwards."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import redis
from django.conf import settings

from console.ha.store import RedisStore


def redis_or_skip() -> redis.Redis:
    """The test Redis, or a skip naming the URL and why."""
    r = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, decode_responses=True)
    try:
        r.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {settings.REDIS_URL}: {exc}")
    return r


@contextmanager
def redis_store(name: str = "test", clock: Callable[[], float] = time.time) -> Iterator[RedisStore]:
    r = redis_or_skip()
    prefix = f"haven-{name}-{uuid.uuid4().hex[:8]}:"
    try:
        yield RedisStore(r, prefix=prefix, clock=clock)
    finally:
        for key in r.scan_iter(f"{prefix}*"):
            r.delete(key)
