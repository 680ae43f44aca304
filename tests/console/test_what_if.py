"""'What if this host dies now?': the engine's simulator on the live cluster — its prediction
matches what the runtime then really does, and the API, page and CLI answer alike."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from console.ha import rules, whatif
from console.ha.store import Store
from console.services.models import VmService
from tests.console import factories as f
from tests.console.test_runtime import on_gfs2, placement, run
from tests.console.views_support import login, text


@pytest.fixture
def world(db: None, live_view: Any) -> dict[str, Any]:
    world = f.domains_world(
        fenced=("et-virt05", "et-virt06"), web_on="et-virt05", prefer7=("et-virt07",), db_priority=5
    )
    live_view.beat(*world["hosts"].values())
    return world


def fates(p: whatif.Prediction) -> dict[str, tuple[str, str | None]]:
    return {g.service: (g.outcome, g.after) for g in p.guests}


def test_a_power_loss_is_predicted_guest_by_guest(world: dict[str, Any]) -> None:
    p = whatif.predict(world["cluster"], "et-virt05")
    assert p.fenced == ["et-virt05"]
    got = fates(p)
    assert got["web"][0] == "restarts" and got["web"][1] in ("et-virt06", "et-virt07")
    assert got["licensed"] == ("waits", None)  # its restricted domain has no other member
    assert got["db"] == ("stays", "et-virt07")
    web = next(g for g in p.guests if g.service == "web")
    # noticed after the silence limit, then the fence, then the start
    assert web.seconds is not None and web.seconds >= p.timings["silent_after_s"]
    licensed = next(g for g in p.guests if g.service == "licensed")
    assert "only5" in licensed.reason or "restricted" in licensed.reason, licensed.reason
    assert any("Simulated" in n for n in p.notes)


def test_a_host_without_fence_device_makes_its_guests_wait(world: dict[str, Any]) -> None:
    p = whatif.predict(world["cluster"], "et-virt07")
    assert p.fenced == []
    outcome, after = fates(p)["db"]
    assert (outcome, after) == ("waits", None)
    assert any("would not be fenced" in n for n in p.notes)


def test_maintenance_is_predicted_as_live_migrations(world: dict[str, Any]) -> None:
    p = whatif.predict(world["cluster"], "et-virt05", "maintenance")
    got = fates(p)
    assert got["web"][0] == "migrates" and got["web"][1] in ("et-virt06", "et-virt07")
    assert got["licensed"][0] in ("stays", "waits")  # nowhere else to go
    assert p.fenced == []


def test_the_api_answers_any_reader_and_names_bad_fields(
    world: dict[str, Any], viewer_api: APIClient
) -> None:
    url = f"/api/clusters/{world['cluster'].pk}/what-if/"
    ok = viewer_api.post(url, {"host": "et-virt05"}, format="json")
    assert ok.status_code == 200, ok.content
    body = ok.json()
    assert body["fenced"] == ["et-virt05"] and body["event"] == "power_off"
    assert {g["service"] for g in body["guests"]} == {"web", "licensed", "db"}
    bad = viewer_api.post(url, {"host": "nope"}, format="json")
    assert bad.status_code == 400 and "host" in bad.json()
    bad = viewer_api.post(url, {"host": "et-virt05", "event": "meteor"}, format="json")
    assert bad.status_code == 400 and "event" in bad.json()
    assert VmService.objects.filter(state="started").count() == 3  # nothing was touched


def test_the_page_shows_the_prediction(world: dict[str, Any]) -> None:
    c, h = world["cluster"].pk, world["hosts"]["et-virt05"].pk
    page = text(login("viewer").get(f"/clusters/{c}/hosts/{h}/what-if/?event=power_off"))
    assert 'id="fate-web" data-outcome="restarts"' in page
    assert 'id="fate-licensed" data-outcome="waits"' in page
    assert "et-virt05</strong> would be fenced first" in page
    assert 'id="fate-db"' not in page  # unaffected guests are not listed
    host_page = text(login("viewer", "v2").get(f"/clusters/{c}/hosts/{h}/"))
    assert "What if it dies now?" in host_page


@pytest.mark.django_db(transaction=True)
def test_the_prediction_is_what_the_runtime_then_does(cluster3: Any, store: Store) -> None:
    cluster, agents = cluster3
    t = run(cluster, agents, store, 1000.0, 1005.0)
    with rules.use(store=store, clock=lambda: t):
        predicted = whatif.predict(cluster, "et-virt05")
    agents.power_off("et-virt05")  # now the real power loss, through the runtime
    run(cluster, agents, store, t, t + 15)
    real = placement()
    for g in predicted.guests:
        assert real[g.service] == ("started", g.after), (g, real)
    assert predicted.fenced == agents.fenced == ["et-virt05"]


@pytest.mark.django_db(transaction=True)
def test_a_guest_on_gfs2_is_predicted_and_restarted_only_where_it_is_mounted(
    cluster3: Any, store: Store
) -> None:
    cluster, agents = cluster3
    on_gfs2(cluster, "guest1")
    agents.mounts = {"et-virt05": ["/guest_roots"], "et-virt06": [], "et-virt07": ["/guest_roots"]}
    t = run(cluster, agents, store, 1000.0, 1005.0)
    with rules.use(store=store, clock=lambda: t):
        predicted = whatif.predict(cluster, "et-virt05")
    assert fates(predicted)["guest1"] == ("restarts", "et-virt07")  # not et-virt06
    agents.power_off("et-virt05")
    run(cluster, agents, store, t, t + 15)
    assert placement()["guest1"] == ("started", "et-virt07")
