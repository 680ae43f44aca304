"""Live updates by push: server-sent events that tell a cluster page to refresh at once.

The runner publishes on ``<prefix>changed:<cluster id>`` (``Store.publish_change``) after
every tick that changed a state or sent an action (console/ha/runner.py); each open
cluster page holds one ``EventSource`` on this view and re-fetches its live fragment when told,
so a change shows within a few hundred milliseconds. A stream ends after ``STREAM_S`` (the
browser reconnects by itself), so no web worker is held for ever; the 2 s poll stays as the
fallback.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from django.http import HttpRequest, StreamingHttpResponse
from django.shortcuts import get_object_or_404

from console.clusters.models import Cluster
from console.core.views import role_required

STREAM_S = 55.0
KEEPALIVE_S = 15.0


def publish_change(store: Any, cluster_id: int) -> None:
    """Tell every open page of the cluster (best effort: Redis away, a page still polls)."""
    with contextlib.suppress(Exception):
        store.publish_change(cluster_id)


def _events(cluster_id: int) -> Iterator[bytes]:
    from console.ha.store import RedisStore
    from console.ha.tasks import store

    s = store()
    if not isinstance(s, RedisStore):  # a store in this process (tests): the 2 s poll refreshes
        yield b"retry: 5000\nevent: unavailable\ndata: broker\n\n"
        return
    pubsub = s.r.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    try:
        pubsub.subscribe(s.change_channel(cluster_id))
    except Exception:
        yield b"retry: 5000\nevent: unavailable\ndata: broker\n\n"
        return
    yield b"retry: 2000\nevent: hello\ndata: 1\n\n"
    end = time.monotonic() + STREAM_S
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < end:
            message = pubsub.get_message(timeout=1.0)
            if message is not None:
                # drain a burst into one refresh
                while pubsub.get_message(timeout=0.05) is not None:
                    pass
                yield b"event: changed\ndata: 1\n\n"
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > KEEPALIVE_S:
                yield b": keepalive\n\n"
                quiet_since = time.monotonic()
    finally:
        pubsub.close()


@role_required()
def cluster_stream(request: HttpRequest, pk: int) -> Any:  # a StreamingHttpResponse
    cluster = get_object_or_404(Cluster, pk=pk)
    response = StreamingHttpResponse(_events(cluster.pk), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
