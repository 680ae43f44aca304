"""A dry run of a failover-domain edit or a service change: the moves it would cause, shown
before saving — the engine's own simulator on the live cluster, on the page and in the API,
with nothing saved."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from console.ha import whatif
from console.services import services
from console.services.models import FailoverDomain, VmService
from tests.console import factories as f
from tests.console.views_support import login, text


@pytest.fixture
def world(db: None, live_view: Any) -> dict[str, Any]:
    world = f.domains_world(
        fenced=("et-virt05", "et-virt06", "et-virt07"),
        web_on="et-virt06",
        prefer7=("et-virt07", "et-virt06"),
    )
    live_view.beat(*world["hosts"].values())
    return world


def moves(p: whatif.Prediction) -> dict[str, tuple[str, str | None]]:
    return {g.service: (g.outcome, g.after) for g in p.guests}


def members(world: dict[str, Any], **priorities: int) -> list[dict[str, Any]]:
    return [{"host": world["hosts"][h], "priority": p} for h, p in priorities.items()]


def test_an_unchanged_domain_moves_nothing(world: dict[str, Any]) -> None:
    p = services.preview_domain(world["prefer7"], None)
    assert p.guests == []
    assert any("No guest would move" in n for n in p.notes)
    assert any("Simulated" in n for n in p.notes)


def test_a_new_first_member_draws_the_guest_by_live_migration(world: dict[str, Any]) -> None:
    domain = world["prefer7"]
    p = services.preview_domain(domain, members(world, **{"et-virt06": 1, "et-virt07": 2}))
    assert moves(p) == {"db": ("migrates", "et-virt06")}
    # the same edit with no failback leaves it where it is
    domain.nofailback = True
    p = services.preview_domain(domain, members(world, **{"et-virt06": 1, "et-virt07": 2}))
    assert moves(p) == {}
    domain.refresh_from_db()
    assert not domain.nofailback  # nothing was saved
    assert [m.host.name for m in domain.members.order_by("priority")] == ["et-virt07", "et-virt06"]


def test_a_restricted_domain_losing_the_guests_host_moves_it(world: dict[str, Any]) -> None:
    p = services.preview_domain(world["only5"], members(world, **{"et-virt06": 1}))
    outcome, after = moves(p)["licensed"]
    assert after == "et-virt06" and outcome in ("migrates", "restarts"), p.guests
    assert set(moves(p)) == {"licensed"}


def test_a_renamed_domain_is_still_the_services_domain(world: dict[str, Any]) -> None:
    domain = world["only5"]
    domain.name = "licence-host"
    assert services.preview_domain(domain, None).guests == []
    assert FailoverDomain.objects.filter(name="only5").exists()


def test_a_new_service_shows_where_it_would_start(world: dict[str, Any]) -> None:
    big = VmService(
        cluster=world["cluster"],
        name="batch",
        memory_mb=3000,
        failover_domain=world["only5"],
    )
    p = services.preview_service(big)
    outcome, after = moves(p)["batch"]
    assert (outcome, after) == ("starts", "et-virt05")
    assert not VmService.objects.filter(name="batch").exists()


def test_the_page_previews_and_saves_nothing(world: dict[str, Any]) -> None:
    c, d = world["cluster"].pk, world["prefer7"]
    hosts = world["hosts"]
    form = {
        "name": "prefer7",
        "ordered": "on",
        f"member_{hosts['et-virt06'].pk}": "on",
        f"priority_{hosts['et-virt06'].pk}": "1",
        f"member_{hosts['et-virt07'].pk}": "on",
        f"priority_{hosts['et-virt07'].pk}": "2",
        f"priority_{hosts['et-virt05'].pk}": "1",
        "dry_run": "1",
    }
    admin = login("admin")
    page = text(admin.post(f"/clusters/{c}/domains/{d.pk}/", form))
    assert 'id="dry-run-result"' in page
    assert 'id="move-db" data-outcome="migrates" data-after="et-virt06"' in page
    assert [m.host.name for m in d.members.order_by("priority")] == ["et-virt07", "et-virt06"]
    form.pop("dry_run")
    saved = admin.post(f"/clusters/{c}/domains/{d.pk}/", form)
    assert saved.status_code == 302
    assert [m.host.name for m in d.members.order_by("priority")] == ["et-virt06", "et-virt07"]


def test_the_api_previews_for_admins_only_and_names_bad_fields(
    world: dict[str, Any], admin_api: APIClient, viewer_api: APIClient
) -> None:
    d = world["prefer7"]
    hosts = world["hosts"]
    body = {
        "members": [
            {"host": hosts["et-virt06"].pk, "priority": 1},
            {"host": hosts["et-virt07"].pk, "priority": 2},
        ]
    }
    ok = admin_api.post(f"/api/failover-domains/{d.pk}/dry-run/", body, format="json")
    assert ok.status_code == 200, ok.content
    assert [(g["service"], g["outcome"], g["after"]) for g in ok.json()["guests"]] == [
        ("db", "migrates", "et-virt06")
    ]
    assert (
        viewer_api.post(f"/api/failover-domains/{d.pk}/dry-run/", body, format="json").status_code
        == 403
    )
    bad = admin_api.post(
        f"/api/failover-domains/{d.pk}/dry-run/",
        {"members": [{"host": hosts["et-virt06"].pk, "priority": 500}]},
        format="json",
    )
    assert bad.status_code == 400 and "members" in bad.json(), bad.content
    db = VmService.objects.get(name="db")
    pri = admin_api.post(f"/api/services/{db.pk}/dry-run/", {"priority": 7}, format="json")
    assert pri.status_code == 200 and pri.json()["guests"] == [], pri.content
    assert VmService.objects.get(name="db").priority == db.priority
    assert [m.host.name for m in d.members.order_by("priority")] == ["et-virt07", "et-virt06"]
