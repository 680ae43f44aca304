"""The console explains: reasons beside states, the host page, the service list's search,
filters, sort and pages (with a pinned query count), and the push that refreshes a page."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from console.clusters.stream import publish_change
from console.ha import tasks
from console.ha.store import RedisStore
from console.services.models import VmService
from tests.console import factories as f
from tests.console.views_support import login, text
from tests.stores import redis_store


@pytest.fixture
def world(db: None) -> dict[str, Any]:
    cluster = f.ClusterFactory(name="et")
    h5, h6 = (
        f.HostFactory(cluster=cluster, name=name, state="online", memory_total_mb=8192)
        for name in ("et-virt05", "et-virt06")
    )
    h7 = f.HostFactory(
        cluster=cluster,
        name="et-virt07",
        state="unreachable",
        state_reason="fence failed (timeout); retry in 10s",
    )
    domain = f.FailoverDomainFactory(cluster=cluster, name="prefer5")
    f.VmServiceFactory(cluster=cluster, name="web1", state="started", host=h5)
    waiting = "waiting for et-virt07 to be fenced (attempt 2, next in 10 s)"
    moving = "migrating et-virt05 -> et-virt06"
    for name, state, host, more in (
        ("db1", "fence", h7, {"failover_domain": domain, "state_reason": waiting}),
        ("app1", "migrating", h5, {"target": h6, "state_reason": moving}),
    ):
        f.VmServiceFactory(cluster=cluster, name=name, state=state, host=host, **more)
    f.FenceDeviceFactory(cluster=cluster, host=h5, name="ipmi5")
    return {"cluster": cluster, "hosts": (h5, h6, h7)}


def test_reasons_stand_beside_every_state(world: dict[str, Any], viewer_api: APIClient) -> None:
    c = world["cluster"].pk
    page = text(login("viewer").get(f"/clusters/{c}/"))
    assert "waiting for et-virt07 to be fenced (attempt 2, next in 10 s)" in page
    assert "waiting for fence" in page  # the badge says it in words, not "fence"
    assert "fence failed (timeout); retry in 10s" in page
    assert 'et-virt05</a> → <a href="/clusters/' in page  # a migrating guest: source → target
    [row] = viewer_api.get("/api/services/?name=db1").json()["results"]
    assert row["state_reason"].startswith("waiting for et-virt07")
    host = viewer_api.get(f"/api/hosts/{world['hosts'][2].pk}/").json()
    assert host["state_reason"] == "fence failed (timeout); retry in 10s"


def test_the_host_page_says_everything_about_a_host(world: dict[str, Any]) -> None:
    c, h5 = world["cluster"].pk, world["hosts"][0]
    f.JobFactory(
        cluster=world["cluster"],
        kind="fence-test",
        status="succeeded",
        params={"device": "ipmi5", "host": "et-virt05", "action": "status"},
    )
    page = text(login("viewer").get(f"/clusters/{c}/hosts/{h5.pk}/"))
    assert 'id="host-name">et-virt05' in page
    assert "web1" in page and "app1" in page and "db1" not in page
    assert "ipmi5" in page and "succeeded" in page
    page7 = text(login("viewer", "v2").get(f"/clusters/{c}/hosts/{world['hosts'][2].pk}/"))
    assert "No fence device" in page7 and "fence failed (timeout)" in page7
    other = f.ClusterFactory(name="other")
    assert login("viewer", "v3").get(f"/clusters/{other.pk}/hosts/{h5.pk}/").status_code == 404


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ("", {"web1", "db1", "app1"}),
        ("?q=web", {"web1"}),
        ("?q=et-virt07", {"db1"}),  # search covers the host and the reason
        ("?state=red", {"db1"}),
        ("?state=moving", {"app1"}),
        ("?state=started", {"web1"}),
        ("?host=et-virt06", {"app1"}),  # its target
        ("?domain=prefer5", {"db1"}),
        ("?domain=-", {"web1", "app1"}),
    ],
)
def test_the_service_list_searches_and_filters(
    world: dict[str, Any], query: str, shown: set[str]
) -> None:
    page = text(login("viewer").get(f"/clusters/{world['cluster'].pk}/{query}"))
    listed = {n for n in ("web1", "db1", "app1") if f'id="service-{n}"' in page}
    assert listed == shown


def test_bad_filters_are_named_and_ignored(world: dict[str, Any]) -> None:
    page = text(login("viewer").get(f"/clusters/{world['cluster'].pk}/?state=purple&sort=x"))
    assert 'data-field="state"' in page and "'purple' is not a state" in page
    assert 'data-field="sort"' in page
    assert 'id="service-web1"' in page


def test_sort_and_pages(world: dict[str, Any]) -> None:
    cluster = world["cluster"]
    for i in range(60):
        f.VmServiceFactory(cluster=cluster, name=f"bulk{i:02d}", memory_mb=0)
    client = login("viewer")
    first = text(client.get(f"/clusters/{cluster.pk}/?q=bulk"))
    assert "(60 matching)" in first and "page 1 of 2" in first
    assert 'id="service-bulk00"' in first and 'id="service-bulk59"' not in first
    second = text(client.get(f"/clusters/{cluster.pk}/?q=bulk&page=2"))
    assert 'id="service-bulk59"' in second and 'id="service-bulk00"' not in second
    by_name_desc = text(client.get(f"/clusters/{cluster.pk}/?q=bulk&sort=-name"))
    assert by_name_desc.index("service-bulk59") < by_name_desc.index("service-bulk58")


def test_the_cluster_page_costs_the_same_queries_at_any_size(world: dict[str, Any]) -> None:
    cluster = world["cluster"]
    client = login("viewer")
    client.get(f"/clusters/{cluster.pk}/live/")  # session, roles: warm

    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(f"/clusters/{cluster.pk}/live/").status_code == 200
        return len(ctx.captured_queries)

    small = count()
    h5 = world["hosts"][0]
    VmService.objects.bulk_create(
        [
            VmService(cluster=cluster, name=f"many{i}", domain_xml="<domain/>", host=h5)
            for i in range(300)
        ]
    )
    assert count() == small
    assert small <= 12, small


@pytest.mark.django_db(transaction=True)
def test_a_change_is_pushed_to_open_pages() -> None:
    with redis_store() as store:
        _push_to_open_pages(store)


def _push_to_open_pages(store: RedisStore) -> None:
    cluster = f.ClusterFactory(name="et")
    previous, tasks._store = tasks._store, store
    try:
        response = login("viewer").get(f"/clusters/{cluster.pk}/stream/")
        assert response["Content-Type"] == "text/event-stream"
        chunks = iter(response.streaming_content)
        assert b"event: hello" in next(chunks)
        sent_at = time.monotonic()
        threading.Timer(0.3, publish_change, args=(store, cluster.pk)).start()
        assert b"event: changed" in next(chunks)
        assert time.monotonic() - sent_at < 2.0
        response.close()
    finally:
        tasks._store = previous


def test_the_home_page_costs_the_same_queries_at_any_size(world: dict[str, Any]) -> None:
    client = login("viewer")
    client.get("/")

    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            page = text(client.get("/"))
        assert "2/3" in page  # hosts up / total
        return len(ctx.captured_queries)

    small = count()
    h5 = world["hosts"][0]
    VmService.objects.bulk_create(
        [
            VmService(cluster=world["cluster"], name=f"many{i}", domain_xml="<domain/>", host=h5)
            for i in range(300)
        ]
    )
    assert count() == small <= 8  # session, user, roles, clusters, hosts, services


def test_a_refused_command_is_said_on_the_cluster_page(world: dict[str, Any]) -> None:
    from console.ha.models import PendingCommand

    cluster = world["cluster"]
    job = f.JobFactory(cluster=cluster, kind="migrate", status="failed")
    PendingCommand.objects.create(
        command_id="cmd-x",
        cluster=cluster,
        kind="migrate",
        service="web1",
        node="et-virt07",
        job=job,
        actor="ada",
        outcome=PendingCommand.Outcome.REFUSED,
        reason="et-virt07 is unreachable",
    )
    page = text(login("viewer").get(f"/clusters/{cluster.pk}/"))
    assert 'id="refusals"' in page
    assert "migrate web1 to et-virt07" in page and "et-virt07 is unreachable" in page


def test_jobs_are_named_by_their_object_and_who_asked(world: dict[str, Any]) -> None:
    from console.jobs import services as jobs

    engine_job = jobs.create_job(
        "start",
        [],
        cluster=world["cluster"],
        params={"service": "web1", "host": "et-virt05"},
        action_id="c1-7",
    )
    demo_job = jobs.create_job("bootstrap", [], created_by="demo", params={"cluster": "lab"})
    assert engine_job.title == "start web1 on et-virt05" and engine_job.by == "HA engine"
    assert demo_job.title == "bootstrap lab" and demo_job.by == "demo"
    page = text(login("viewer").get("/jobs/"))
    assert "start web1 on et-virt05" in page and "HA engine" in page and ">demo<" in page


def test_rotate_credentials_from_the_host_page(world: dict[str, Any]) -> None:
    c, h5 = world["cluster"].pk, world["hosts"][0]
    url = f"/clusters/{c}/hosts/{h5.pk}/rotate-credentials/"
    assert "Rotate agent credentials" not in text(
        login("viewer").get(f"/clusters/{c}/hosts/{h5.pk}/")
    )
    assert login("viewer", "v2").post(url).status_code == 403
    admin = login("admin")
    assert "Rotate agent credentials" in text(admin.get(f"/clusters/{c}/hosts/{h5.pk}/"))
    # a host this console never bootstrapped has no credential: the page says what to do
    page = text(admin.post(url, follow=True))
    assert "has no broker credential from this console" in page and "SSH" in page
