"""Every page renders for every role, lists avoid N+1 queries, errors are plain language."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from console.events.services import record
from tests.console import factories as f
from tests.console.views_support import et_world, login


@pytest.fixture
def world(db: None) -> dict[str, Any]:
    built = et_world(ordered=True)
    cluster, hosts, svc = built["cluster"], built["hosts"], built["service"]
    dev = f.BlockDeviceFactory(host=hosts[0], path="/dev/loop3")
    vg = f.VolumeGroupFactory(cluster=cluster, name="vg_et")
    vg.physical_volumes.add(dev)
    lv = f.LogicalVolumeFactory(volume_group=vg, name="vms")
    f.FilesystemFactory(logical_volume=lv, name="vms", mount_point="/mnt/vms")
    job = f.JobFactory(cluster=cluster, kind="storage-probe", params={"host": "et-virt05"})
    record(actor="tester", verb="create", obj=svc, cluster=cluster)
    return {**built, "lv": lv, "job": job}


def pages(w: dict[str, Any]) -> list[str]:
    c, h, s = w["cluster"].pk, w["hosts"][0].pk, w["service"].pk
    return [
        "/",
        f"/clusters/{c}/",
        f"/clusters/{c}/live/",
        f"/clusters/{c}/domains/",
        f"/clusters/{c}/fence/",
        f"/clusters/{c}/hosts/{h}/storage/",
        f"/clusters/{c}/hosts/{h}/storage/live/",
        f"/clusters/{c}/services/{s}/migrate/",
        "/jobs/",
        f"/jobs/{w['job'].pk}/",
        f"/jobs/{w['job'].pk}/live/",
        "/events/",
        "/events/?host=et-virt05&kind=create&period=24h",
        "/events/incidents/",
    ]


ADMIN_PAGES = [
    "/clusters/new/",
    "/clusters/{c}/domains/new/",
    "/clusters/{c}/domains/{d}/",
    "/clusters/{c}/domains/{d}/delete/",
    "/clusters/{c}/services/new/",
    "/clusters/{c}/services/{s}/",
    "/clusters/{c}/services/import/",
    "/clusters/{c}/fence/new/",
    "/clusters/{c}/hosts/{h}/storage/lv/{lv}/extend/",
]


@pytest.mark.parametrize("role", ["admin", "operator", "viewer"])
def test_every_page_renders_for_every_role(world: dict[str, Any], role: str) -> None:
    client = login(role)
    for url in pages(world):
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)


def test_admin_pages_render(world: dict[str, Any]) -> None:
    client = login("admin")
    ids = {
        "c": world["cluster"].pk,
        "d": world["domain"].pk,
        "s": world["service"].pk,
        "h": world["hosts"][0].pk,
        "lv": world["lv"].pk,
    }
    for url in ADMIN_PAGES:
        response = client.get(url.format(**ids))
        assert response.status_code == 200, url


def test_anonymous_is_sent_to_login(world: dict[str, Any]) -> None:
    response = Client().get(f"/clusters/{world['cluster'].pk}/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_user_without_role_gets_403(world: dict[str, Any]) -> None:
    response = login(None).get("/")
    assert response.status_code == 403
    assert b"Your role does not allow" in response.content


def test_cluster_page_shows_health_state_and_host(world: dict[str, Any]) -> None:
    body = login("viewer").get(f"/clusters/{world['cluster'].pk}/").content.decode()
    assert 'id="service-guest1" data-state="started" data-host="et-virt05"' in body
    assert 'hx-trigger="every 2s' in body  # the poll stays as the push's fallback
    assert "badge green" in body
    home = login("viewer", "v2").get("/").content.decode()
    assert "3/3" in home and "1/1" in home


def test_host_page_shows_memory_in_mib(world: dict[str, Any]) -> None:
    c, h = world["cluster"].pk, world["hosts"][0].pk
    body = login("viewer").get(f"/clusters/{c}/hosts/{h}/").content.decode()
    # 4096 MiB total, 3000 free; guest1's XML has 32768 KiB = 32 MiB
    assert "1.1 GiB / 4.0 GiB used (32.0 MiB by its guests)" in body


def test_missing_object_is_a_plain_404(world: dict[str, Any]) -> None:
    response = login("viewer").get("/clusters/999/")
    assert response.status_code == 404
    assert b"Traceback" not in response.content


def _queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    return len(ctx.captured_queries)


def test_lists_do_not_grow_queries_with_rows(world: dict[str, Any]) -> None:
    """N+1 pin: ten times the hosts, services and domains costs no extra query."""
    client = login("admin")
    c = world["cluster"]
    urls = [
        f"/clusters/{c.pk}/live/",
        f"/clusters/{c.pk}/domains/",
        "/",
        "/jobs/",
        "/events/",
        f"/clusters/{c.pk}/fence/",
    ]
    before = {u: _queries(client, u) for u in urls}
    for i in range(10):
        host = f.HostFactory(cluster=c, name=f"more{i}", state="online")
        dom = f.FailoverDomainFactory(cluster=c, name=f"d{i}")
        f.FailoverDomainMemberFactory(domain=dom, host=host)
        f.VmServiceFactory(cluster=c, name=f"g{i}", host=host, state="started", failover_domain=dom)
        f.FenceDeviceFactory(cluster=c, host=host, name=f"fd{i}")
        f.JobFactory(cluster=c)
        f.ClusterFactory()
    after = {u: _queries(client, u) for u in urls}
    assert after == before


def test_cluster_page_query_count(
    world: dict[str, Any], django_assert_max_num_queries: Any
) -> None:
    client = login("admin")
    with django_assert_max_num_queries(13):
        client.get(f"/clusters/{world['cluster'].pk}/live/")


def test_hosts_come_a_page_at_a_time_and_the_filter_names_them_all(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 128 hosts their rows were most of the cluster page's rendering (and of its live
    fragment, every 2 s): they come ``HOSTS_PER_PAGE`` at a time; the host filter of the
    services still offers every host, and the live fragment keeps the page it shows."""
    from console.clusters import views

    monkeypatch.setattr(views, "HOSTS_PER_PAGE", 2)
    c = world["cluster"].pk
    names = sorted(h.name for h in world["hosts"])
    assert len(names) == 3
    client = login("viewer")
    first = client.get(f"/clusters/{c}/").content.decode()
    assert [n for n in names if f'id="host-{n}"' in first] == names[:2]
    assert "hosts 1\u20132 of 3:" in first and "page 1 of 2" in first
    assert all(f"<option>{n}</option>" in first for n in names[2:])  # the filter: all of them
    second = client.get(f"/clusters/{c}/?hosts_page=2").content.decode()
    assert [n for n in names if f'id="host-{n}"' in second] == names[2:]
    assert "hosts_page=2" in second.split('id="live"', 1)[1].split(">", 1)[0]  # its poll
    live = client.get(f"/clusters/{c}/live/?hosts_page=2").content.decode()
    assert [n for n in names if f'id="host-{n}"' in live] == names[2:]
    assert 'id="service-guest1"' in live  # the services are not paged by it
    monkeypatch.setattr(views, "HOSTS_PER_PAGE", 50)
    whole = client.get(f"/clusters/{c}/").content.decode()
    assert 'id="host-pages"' not in whole and "hosts_page" not in whole


def test_a_domain_lists_its_first_guests_and_links_to_the_rest(db: None) -> None:
    cluster = f.ClusterFactory(name="et")
    domain = f.FailoverDomainFactory(cluster=cluster, name="big-domain")
    for i in range(12):
        f.VmServiceFactory(cluster=cluster, name=f"g{i:02d}", failover_domain=domain)
    f.FailoverDomainFactory(cluster=cluster, name="empty")
    body = login("viewer").get(f"/clusters/{cluster.pk}/domains/").content.decode()
    row = body[body.index('id="domain-big-domain"') :].split("</tr>")[0]
    assert "g00, g01, g02, g03, g04, g05, g06, g07, g08, g09" in row and "g10" not in row
    assert f'<a class="more" href="/clusters/{cluster.pk}/?domain=big-domain">and 2 more</a>' in row
    empty = body[body.index('id="domain-empty"') :].split("</tr>")[0]
    assert '<span class="muted">—</span>' in empty and "more" not in empty
