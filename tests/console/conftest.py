from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.test import APIClient


@pytest.fixture
def make_client(db: None) -> Callable[[str | None], APIClient]:
    """An API client logged in with a role ('admin', 'operator', 'viewer') or anonymous."""

    def make(role: str | None) -> APIClient:
        client = APIClient()
        if role is not None:
            user = User.objects.create_user(f"{role}-user", password="pw-for-tests-only")
            # get_or_create: a transactional test before this one flushed the roles migration
            user.groups.add(Group.objects.get_or_create(name=role)[0])
            client.force_authenticate(user)
        return client

    return make


@pytest.fixture
def admin_api(make_client: Callable[[str | None], APIClient]) -> APIClient:
    return make_client("admin")


@pytest.fixture
def viewer_api(make_client: Callable[[str | None], APIClient]) -> APIClient:
    return make_client("viewer")


@pytest.fixture
def operator_api(make_client: Callable[[str | None], APIClient]) -> APIClient:
    return make_client("operator")


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    """PBKDF2 makes every created user cost ~0.3 s; tests do not need the strength."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Tests drive the runner themselves; the live tests turn this back on.
    settings.HAVEN_WAKE_ON_COMMAND = False


@pytest.fixture(autouse=True)
def fresh_runner_memory() -> None:
    """The runner keeps a cluster's configuration between ticks (console/ha/snapshot.py):
    each test starts without what an earlier one left."""
    from console.ha import snapshot

    snapshot.forget()


class LiveView:
    """The live picture the engine's rulebook reads (heartbeats in a Redis store of the test's
    own), written from the database rows a test made: each beating host reports the services
    the database has started on it."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def beat(self, *hosts: Any, at: float | None = None) -> None:
        import time

        from console.services.models import VmService

        for host in hosts:
            guests = sorted(
                VmService.objects.filter(host=host, state="started").values_list("name", flat=True)
            )
            used = sum(
                VmService.objects.filter(host=host, state="started").values_list(
                    "memory_mb", flat=True
                )
            )
            total = host.memory_total_mb or 8192
            self.store.put_heartbeat(
                host.name,
                {
                    "v": 2,
                    "kind": "heartbeat",
                    "host": host.name,
                    "memory_total_mib": total,
                    "memory_free_mib": max(0, total - used),
                    "cpus": host.cpus or 4,
                    "guests": [{"name": g, "uuid": "", "state": "running"} for g in guests],
                },
                time.time() if at is None else at,
            )


@pytest.fixture
def live_view() -> Any:
    from console.operations import rules
    from tests.stores import redis_store

    with redis_store() as store, rules.use(store=store):
        yield LiveView(store)
