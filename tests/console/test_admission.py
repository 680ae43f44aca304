"""Admission control (N+1 by memory) in the console: the API, the pages and the CLI refuse the
start, enable or creation of a protected guest that breaks it with the engine's numbers, and
accept it once a host joins (console/ha/rules.py asks the engine's Rulebook)."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from console.events.models import Event
from console.ha.models import PendingCommand
from console.services.models import VmService
from tests.console import factories as f
from tests.console.views_support import login, text

SHORT = "need 6144 MiB and 4096 MiB would be free (2048 MiB short)"


@pytest.fixture
def tight(db: None, live_view: Any) -> dict[str, Any]:
    """Two 8 GiB hosts half full: one more 2 GiB protected guest breaks N+1."""
    cluster = f.ClusterFactory(name="tight")
    a, b = f.half_full_hosts(cluster, cpus=2)
    extra = f.VmServiceFactory(
        cluster=cluster,
        name="extra",
        state="stopped",
        desired_state="stopped",
        domain_xml=f.domain_xml("extra", memory_kib=2048 * 1024),
    )
    lab = f.VmServiceFactory(
        cluster=cluster,
        name="lab",
        state="stopped",
        desired_state="stopped",
        protected=False,
        domain_xml=f.domain_xml("lab", memory_kib=2048 * 1024),
    )
    live_view.beat(a, b)
    return {"cluster": cluster, "a": a, "b": b, "extra": extra, "lab": lab, "view": live_view}


def test_api_and_page_refuse_the_start_with_the_numbers(
    admin_api: APIClient, tight: dict[str, Any]
) -> None:
    extra = tight["extra"]
    for op in ("start", "enable"):
        response = admin_api.post(f"/api/services/{extra.pk}/{op}/", {}, format="json")
        assert response.status_code == 409, response.content
        detail = response.json()["detail"]
        assert detail.startswith("extra cannot start: admission control: the cluster would not")
        assert SHORT in detail
    page = login("admin", "page-admin").post(
        f"/clusters/{tight['cluster'].pk}/services/{extra.pk}/start/", follow=True
    )
    assert SHORT in text(page)
    assert not PendingCommand.objects.exists()  # nothing half-applied
    refused = Event.objects.filter(object_name="extra", result="refused")
    assert refused.count() == 3 and all(e.data["code"] == "admission" for e in refused)
    # an opted-out guest starts whatever the spare room
    assert admin_api.post(f"/api/services/{tight['lab'].pk}/start/").status_code == 202


def test_creating_a_protected_guest_that_breaks_it_is_refused(
    admin_api: APIClient, tight: dict[str, Any]
) -> None:
    cluster = tight["cluster"]
    body = {"cluster": cluster.pk, "name": "new", "domain_xml": f.domain_xml("new", 2048 * 1024)}
    response = admin_api.post("/api/services/", body, format="json")
    assert response.status_code == 409, response.content
    (message,) = response.json()["protected"]
    assert SHORT in message
    assert not VmService.objects.filter(name="new").exists()
    form = login("admin", "page-admin").post(
        f"/clusters/{cluster.pk}/services/new/",
        {"name": "new", "domain_xml": body["domain_xml"], "recovery": "restart",
         "max_restarts": 0, "restart_window_s": 0, "max_relocations": 1, "priority": 0,
         "migratable": "on", "protected": "on", "autostart": "on"},
    )  # fmt: skip
    assert form.status_code == 200 and SHORT in text(form)
    assert not VmService.objects.filter(name="new").exists()
    # created stopped, or opted out: accepted
    stopped = {**body, "name": "new2", "domain_xml": f.domain_xml("new2", 2048 * 1024)}
    stopped["desired_state"] = "stopped"
    assert admin_api.post("/api/services/", stopped, format="json").status_code == 201
    opted = {**body, "protected": False}
    assert admin_api.post("/api/services/", opted, format="json").status_code == 201


def test_accepted_after_a_host_joins_and_the_page_shows_the_capacity(
    admin_api: APIClient, tight: dict[str, Any]
) -> None:
    cluster, extra = tight["cluster"], tight["extra"]
    page = login("viewer", "page-viewer").get(f"/clusters/{cluster.pk}/")
    assert "survives 1 host failure; 0.0 GiB spare" in text(page)
    # the hosts table shows each host's vCPUs against its limit (CPUs x overcommit)
    assert '<td class="num vcpus">1 / 8</td>' in text(page)
    policy = admin_api.get(f"/api/clusters/{cluster.pk}/policy/").json()["failover"]
    assert policy["summary"] == "survives 1 host failure; 0.0 GiB spare"
    assert (policy["ok"], policy["spare_mb"], policy["survives"]) == (True, 0, 1)
    c = f.HostFactory(cluster=cluster, name="h3", state="online", memory_total_mb=8192)
    tight["view"].beat(tight["a"], tight["b"], c)
    policy = admin_api.get(f"/api/clusters/{cluster.pk}/policy/").json()["failover"]
    assert policy["summary"].startswith("survives 1 host failure; 8.0 GiB spare")
    assert admin_api.post(f"/api/services/{extra.pk}/start/").status_code == 202
    assert PendingCommand.objects.get().service == "extra"


def test_the_policy_is_edited_on_the_page_as_through_the_api(
    admin_api: APIClient, tight: dict[str, Any]
) -> None:
    cluster, extra = tight["cluster"], tight["extra"]
    client = login("admin", "page-admin")
    assert 'id="edit-policy"' in text(client.get(f"/clusters/{cluster.pk}/"))
    bad = client.post(
        f"/clusters/{cluster.pk}/policy/",
        {"cpu_overcommit": "-1", "host_failures_to_tolerate": "1"},
    )
    assert bad.status_code == 200 and "greater than or equal to 0" in text(bad)
    ok = client.post(
        f"/clusters/{cluster.pk}/policy/",
        {"cpu_overcommit": "2", "host_failures_to_tolerate": "0", "rebalance": "on"},
    )
    assert ok.status_code == 302
    cluster.refresh_from_db()
    assert (cluster.cpu_overcommit, cluster.host_failures_to_tolerate, cluster.rebalance) == (
        2.0,
        0,
        True,
    )
    # admission control off: the start goes to the engine
    assert admin_api.post(f"/api/services/{extra.pk}/start/").status_code == 202
    policy = admin_api.get(f"/api/clusters/{cluster.pk}/policy/").json()
    assert policy["failover"]["summary"].startswith("admission control off; ")
    # big1 and big2 each fill half of their host: balanced (or paused while the console's
    # fresh view of heartbeats has less than a liveness window of data)
    r = policy["rebalance"]
    assert (r["stance"], r["reason"]) == ("balanced", "memory use differs by 0%, within 20%") or (
        r["stance"] == "paused" and "started afresh" in r["reason"]
    ), r
    page = text(client.get(f"/clusters/{cluster.pk}/"))
    assert f"Live rebalancer:</strong> {r['stance']} — {r['reason']}</p>" in page
    # the API refuses bad values naming the field; a host's own ratio too
    response = admin_api.patch(
        f"/api/clusters/{cluster.pk}/", {"host_failures_to_tolerate": -1}, format="json"
    )
    assert response.status_code == 400 and "host_failures_to_tolerate" in response.json()
    host = tight["a"]
    response = admin_api.patch(f"/api/hosts/{host.pk}/", {"cpu_overcommit": 1.5}, format="json")
    assert response.status_code == 200, response.content
    host.refresh_from_db()
    assert host.cpu_overcommit == 1.5
    # viewers cannot edit it
    assert login("viewer", "v").post(f"/clusters/{cluster.pk}/policy/", {}).status_code == 403


def test_growing_a_running_protected_guest_is_refused_like_a_start(
    admin_api: APIClient, tight: dict[str, Any]
) -> None:
    big1 = VmService.objects.get(name="big1")

    def resize(service: VmService, mib: int) -> Any:
        """``PATCH`` the guest's XML with this much memory (the same uuid)."""
        xml = f.domain_xml(service.name, memory_kib=mib * 1024).replace(
            "<name>", f"<uuid>{service.uuid}</uuid><name>"
        )
        url = f"/api/services/{service.pk}/"
        return admin_api.patch(url, {"domain_xml": xml}, format="json")

    response = resize(big1, 6144)
    assert response.status_code == 409, response.content
    (message,) = response.json()["domain_xml"]
    assert message.startswith("big1 cannot grow: admission control: the cluster would not")
    assert "need 4096 MiB and 2048 MiB would be free (2048 MiB short)" in message
    big1.refresh_from_db()
    assert big1.memory_mb == 4096  # nothing saved
    # smaller is fine, and so is growing a guest that is not meant to run
    assert resize(big1, 2048).status_code == 200
    assert resize(tight["extra"], 8192).status_code == 200


def test_a_hosts_own_overcommit_is_edited_on_its_page_with_the_apis_rule(
    db: None, admin_api: APIClient
) -> None:
    """The host page's settings form and ``PATCH /api/hosts/{id}/`` take the same field with
    the same rule (the model's validators): a bad value is an error naming the field on both,
    and nothing is saved."""
    cluster = f.ClusterFactory(name="oc", cpu_overcommit=4.0)
    host = f.HostFactory(cluster=cluster, name="oc1", cpus=2, cpu_overcommit=None)
    url = f"/clusters/{cluster.pk}/hosts/{host.pk}/"
    client = login("admin", "oc-admin")
    page = text(client.get(url))
    assert 'id="host-settings-form"' in page and "4.0 per CPU (the cluster's)" in page
    for bad, error in (
        ("-1", "greater than or equal to 0"),
        ("65", "less than or equal to 64"),
        ("lots", "Enter a number."),
        ("nan", "Enter a number."),
    ):
        response = client.post(url + "settings/", {"cpu_overcommit": bad})
        assert response.status_code == 400, bad
        shown = text(response)
        field = shown.split('id="field-cpu_overcommit"', 1)[1].split("</div>", 1)[0]
        assert "vCPU overcommit (vCPUs per CPU)" in field and error in field, (bad, field)
        host.refresh_from_db()
        assert host.cpu_overcommit is None, bad
    ok = client.post(url + "settings/", {"cpu_overcommit": "1.5"})
    assert ok.status_code == 302 and ok["Location"] == url
    host.refresh_from_db()
    assert host.cpu_overcommit == 1.5
    assert "1.5 per CPU (its own)" in text(client.get(url))
    saved = Event.objects.filter(verb="update", object_name="oc1").latest("id")
    assert saved.actor == "oc-admin"
    assert client.post(url + "settings/", {"cpu_overcommit": ""}).status_code == 302
    host.refresh_from_db()
    assert host.cpu_overcommit is None  # empty: the cluster's ratio again
    # the API: the same rule, a 400 naming the field, nothing saved
    for bad in (-1, 65, "lots"):
        response = admin_api.patch(f"/api/hosts/{host.pk}/", {"cpu_overcommit": bad}, format="json")
        assert response.status_code == 400 and "cpu_overcommit" in response.json(), bad
        host.refresh_from_db()
        assert host.cpu_overcommit is None
    assert (
        admin_api.patch(f"/api/hosts/{host.pk}/", {"cpu_overcommit": 0}, format="json").status_code
        == 200
    )
    assert "no limit (its own)" in text(client.get(url))
    # an operator or a viewer cannot change it
    for role in ("operator", "viewer"):
        other = login(role, f"oc-{role}")
        assert other.post(url + "settings/", {"cpu_overcommit": "2"}).status_code == 403
        assert 'id="host-settings-form"' not in text(other.get(url))
    host.refresh_from_db()
    assert host.cpu_overcommit == 0
