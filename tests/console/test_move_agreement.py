"""The migrate page, the API and the engine agree on every move, over random clusters.

For a random cluster in the database (hosts of random size, some silent or in maintenance, a
restricted or unrestricted domain with random members, guests of random size started here and
there or stopped, some not migratable) and its live picture (heartbeats in a store of the
test's own), the hosts the migrate page offers, the hosts the API accepts a migrate to, and the
hosts the engine's rulebook accepts on the same snapshot are the same set; a refusal carries the
engine's reason on the page and in the API's answer alike. tests/engine/test_engine_rulebook.py
shows that the rulebook accepts exactly what `tick` accepts, so the page and the API answer as
`tick` would.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from console import engine
from console.clusters.models import Host
from console.ha import rules, snapshot
from console.ha.models import PendingCommand
from console.ha.store import MemoryStore
from console.services.models import VmService
from tests.console import factories as f
from tests.console.views_support import login, text

NOW = 1_000_000.0
NAMES = ["h1", "h2", "h3", "h4"]

hosts_st = st.lists(
    st.fixed_dictionaries(
        {
            "memory": st.sampled_from([2048, 4096, 8192]),
            "beating": st.sampled_from([True, True, True, False]),
            "maintenance": st.sampled_from([False, False, True]),
        }
    ),
    min_size=2,
    max_size=4,
)
guests_st = st.lists(
    st.fixed_dictionaries(
        {
            "memory": st.sampled_from([256, 512, 1024, 3072]),
            "on": st.integers(min_value=0, max_value=3),
            "running": st.sampled_from([True, True, True, False]),
            "migratable": st.sampled_from([True, True, True, False]),
            "in_domain": st.booleans(),
        }
    ),
    min_size=1,
    max_size=4,
)


class _Rollback(Exception):
    pass


def _build(
    hosts: list[dict[str, Any]],
    guests: list[dict[str, Any]],
    restricted: bool,
    members: list[bool],
    store: MemoryStore,
) -> tuple[Any, list[VmService]]:
    cluster = f.ClusterFactory(name="agree")
    rows = [
        f.HostFactory(
            cluster=cluster,
            name=NAMES[i],
            memory_total_mb=h["memory"],
            cpus=4,
            maintenance=h["maintenance"],
        )
        for i, h in enumerate(hosts)
    ]
    domain = f.FailoverDomainFactory(cluster=cluster, name="dom", restricted=restricted)
    for i, (row, member) in enumerate(zip(rows, members, strict=False)):
        if member:
            f.FailoverDomainMemberFactory(domain=domain, host=row, priority=i + 1)
    services = []
    for i, g in enumerate(guests):
        host = rows[g["on"] % len(rows)]
        services.append(
            f.VmServiceFactory(
                cluster=cluster,
                name=f"g{i}",
                domain_xml=f.domain_xml(f"g{i}", memory_kib=g["memory"] * 1024),
                state="started" if g["running"] else "stopped",
                host=host if g["running"] else None,
                migratable=g["migratable"],
                failover_domain=domain if g["in_domain"] else None,
            )
        )
    for row, h in zip(rows, hosts, strict=True):
        if not h["beating"]:
            continue
        here = [s for s in services if s.host_id == row.pk]
        used = sum(s.memory_mb for s in here)
        store.put_heartbeat(
            row.name,
            {
                "v": 2,
                "kind": "heartbeat",
                "host": row.name,
                "memory_total_mib": row.memory_total_mb,
                "memory_free_mib": max(0, row.memory_total_mb - used),
                "cpus": 4,
                "guests": [{"name": s.name, "uuid": "", "state": "running"} for s in here],
            },
            NOW - 0.5,
        )
    return cluster, services


def _page(client: Any, service: VmService) -> tuple[dict[str, bool], str]:
    body = text(client.get(f"/clusters/{service.cluster_id}/services/{service.pk}/migrate/"))
    found = re.findall(r'id="target-([\w.-]+)" data-accepted="(\d)"', body)
    return {h: a == "1" for h, a in found}, body


def _strings(data: Any) -> str:
    """Every string in a JSON answer, one per line."""
    if isinstance(data, dict):
        return "\n".join(_strings(v) for v in data.values())
    if isinstance(data, list):
        return "\n".join(_strings(v) for v in data)
    return str(data)


def _api(api: APIClient, service: VmService, host: str) -> tuple[bool, str]:
    """Does the API take a migrate of ``service`` to ``host``? (undone at once)"""
    try:
        with transaction.atomic():
            answer = api.post(f"/api/services/{service.pk}/migrate/", {"host": host}, format="json")
            accepted = answer.status_code == 202
            body = _strings(answer.json())
            assert answer.status_code in (202, 409), (answer.status_code, body)
            if accepted:
                assert PendingCommand.objects.filter(service=service.name, node=host).exists()
            raise _Rollback
    except _Rollback:
        pass
    return accepted, body


@pytest.mark.django_db
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    hosts=hosts_st,
    guests=guests_st,
    restricted=st.booleans(),
    members=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_page_api_and_engine_offer_the_same_targets(
    hosts: list[dict[str, Any]], guests: list[dict[str, Any]], restricted: bool, members: list[bool]
) -> None:
    store = MemoryStore(clock=lambda: NOW)
    try:
        with transaction.atomic(), rules.use(store=store, clock=lambda: NOW):
            snapshot.forget()
            cluster, services = _build(hosts, guests, restricted, members, store)
            client, api = login("operator", "agree-ui"), APIClient()
            api.force_login(_user("agree-ui"))
            loaded = snapshot.load(cluster, store, NOW)
            for service in services:
                book = engine.Rulebook(loaded.snapshot, loaded.now)
                engine_says = {
                    h.name: book.move_refusal(service.name, h.name, True)
                    for h in Host.objects.filter(cluster=cluster)
                }
                page, page_text = _page(client, service)
                assert page == {h: r is None for h, r in engine_says.items()}, (
                    service.name,
                    page,
                    engine_says,
                )
                for host, refusal in engine_says.items():
                    accepted, body = _api(api, service, host)
                    assert accepted == (refusal is None), (service.name, host, body, refusal)
                    if refusal is not None:
                        assert refusal.reason in body, (refusal.reason, body)
                        assert refusal.reason in page_text, refusal.reason
            raise _Rollback
    except _Rollback:
        pass
    finally:
        snapshot.forget()


def _user(name: str) -> Any:
    from django.contrib.auth.models import User

    return User.objects.get(username=name)


@pytest.mark.django_db
def test_a_guest_too_big_for_the_target_is_refused_by_all_three() -> None:
    """The one refusal random clusters reach least often, shown on its own."""
    store = MemoryStore(clock=lambda: NOW)
    with rules.use(store=store, clock=lambda: NOW):
        snapshot.forget()
        hosts = [
            {"memory": 4096, "beating": True, "maintenance": False},
            {"memory": 1024, "beating": True, "maintenance": False},
        ]
        guests = [
            {"memory": 3072, "on": 0, "in_domain": False, "running": True, "migratable": True}
        ]
        cluster, (big,) = _build(hosts, guests, False, [False] * 4, store)
        loaded = snapshot.load(cluster, store, NOW)
        refusal = engine.Rulebook(loaded.snapshot, loaded.now).move_refusal("g0", "h2", True)
        assert refusal is not None and refusal.code is engine.RefusalCode.NO_ROOM, refusal
        client = login("operator", "agree-ui")
        api = APIClient()
        api.force_login(_user("agree-ui"))
        page, page_text = _page(client, big)
        assert page == {"h1": False, "h2": False}
        assert refusal.reason in page_text
        accepted, body = _api(api, big, "h2")
        assert not accepted and refusal.reason in body
    snapshot.forget()
