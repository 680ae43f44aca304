from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.test import APIClient

from console.ha.fakes import FakeAgents
from console.ha.store import RedisStore, Store
from console.jobs.transport import use_transport
from tests.console import factories as f
from tests.stores import redis_store


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


@pytest.fixture
def store() -> Iterator[RedisStore]:
    """A Redis store of the test's own (tests/stores.py), emptied after."""
    with redis_store() as s:
        yield s


@pytest.fixture
def cluster3(db: None, store: Store) -> Iterator[tuple[Any, FakeAgents]]:
    """Cluster ``et``: three hosts, each with a fence device (secret password), a sealing
    key and a failover domain of its own preferring one of three guests; the fake agents
    of its hosts are the job transport."""
    cluster = f.ClusterFactory(name="et")
    hosts = [
        f.HostFactory(
            cluster=cluster,
            name=f"et-virt0{i}",
            address=f"10.88.0.{i}",
            libvirt_uri=f"qemu+tcp://et-virt0{i}/system",
        )
        for i in (5, 6, 7)
    ]
    for host in hosts:
        f.sealing_key(host.name)  # the bootstrap gave each agent its key
        device = f.FenceDeviceFactory(
            host=host, cluster=cluster, plug=host.name, name=f"ipmi-{host.name}"
        )
        device.secret_parameters = {"password": "bmc-secret"}
        device.save()
        domain = f.FailoverDomainFactory(cluster=cluster, name=f"bias-{host.name}")
        f.FailoverDomainMemberFactory(domain=domain, host=host, priority=1)
    for i, host in enumerate(hosts, start=1):
        f.VmServiceFactory(
            cluster=cluster, name=f"guest{i}", failover_domain=host.domain_memberships.get().domain
        )
    agents = FakeAgents(store, [h.name for h in hosts], memory_total_mib=16384, cpus=8)
    with use_transport(agents):
        yield cluster, agents


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
    from console.ha import rules
    from tests.stores import redis_store

    with redis_store() as store, rules.use(store=store):
        yield LiveView(store)
