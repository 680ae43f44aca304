"""Forms and actions through the pages: roles (viewers see no buttons and get 403 when they
post anyway), errors next to their fields in plain words, and every write via the services."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, User

from console.events.models import Event
from console.ha.models import PendingCommand
from console.jobs.models import Job
from console.services.models import FailoverDomain, VmService
from tests.console import factories as f
from tests.console.views_support import et_world, login, text


@pytest.fixture
def world(db: None) -> dict[str, Any]:
    built = et_world(restricted=True)
    f.FailoverDomainMemberFactory(domain=built["domain"], host=built["hosts"][1], priority=2)
    return built


def action_posts(w: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    c, h, s, d = w["cluster"].pk, w["hosts"][0].pk, w["service"].pk, w["domain"].pk
    return [
        (f"/clusters/{c}/services/{s}/stop/", {}),
        (f"/clusters/{c}/services/{s}/disable/", {}),
        (f"/clusters/{c}/services/{s}/relocate/", {}),
        (f"/clusters/{c}/services/{s}/migrate/", {"host": "et-virt06"}),
        (f"/clusters/{c}/hosts/{h}/maintenance/", {"on": "1"}),
        (f"/clusters/{c}/hosts/{h}/acknowledge-down/", {}),
        (f"/clusters/{c}/domains/new/", {"name": "x"}),
        (f"/clusters/{c}/domains/{d}/delete/", {}),
        (f"/clusters/{c}/services/{s}/delete/", {}),
        (f"/clusters/{c}/services/new/", {"name": "x"}),
        (f"/clusters/{c}/fence/{w['fence'].pk}/test/", {}),
        (f"/clusters/{c}/fence/{w['fence'].pk}/delete/", {}),
        (f"/clusters/{c}/hosts/{h}/storage/probe/", {}),
        (f"/clusters/{c}/hosts/{h}/storage/vg/", {"name": "vg"}),
        (f"/clusters/{c}/hosts/{h}/join-domain/", {"domain": str(d), "priority": "3"}),
        ("/clusters/new/", {"step": "scan"}),
    ]


BUTTON_MARKERS = [
    "<button",
    "New VM service",
    "New failover domain",
    "New fence device",
    "Create cluster",
    "Migrate",
]


def test_viewer_sees_no_action_buttons(world: dict[str, Any]) -> None:
    client = login("viewer")
    c, h = world["cluster"].pk, world["hosts"][0].pk
    for url in (
        "/",
        f"/clusters/{c}/",
        f"/clusters/{c}/domains/",
        f"/clusters/{c}/fence/",
        f"/clusters/{c}/hosts/{h}/storage/",
    ):
        body = text(client.get(url))
        main = body.split("<main>", 1)[1]
        for marker in BUTTON_MARKERS:
            assert marker not in main, (url, marker)


def test_viewer_gets_403_when_posting_anyway(world: dict[str, Any]) -> None:
    client = login("viewer")
    events, jobs = Event.objects.count(), Job.objects.count()
    for url, data in action_posts(world):
        response = client.post(url, data)
        assert response.status_code == 403, url
        assert b"Your role does not allow" in response.content
    assert (Event.objects.count(), Job.objects.count()) == (events, jobs)
    assert FailoverDomain.objects.filter(pk=world["domain"].pk).exists()


def test_operator_operates_but_does_not_configure(world: dict[str, Any]) -> None:
    client = login("operator")
    c, s = world["cluster"].pk, world["service"].pk
    page = text(client.get(f"/clusters/{c}/"))
    assert "Maintenance" in page and ">Stop<" in page and "New VM service" not in page
    response = client.post(f"/clusters/{c}/services/{s}/stop/")
    assert response.status_code == 302
    command = PendingCommand.objects.get()
    assert (command.kind, command.service, command.actor) == ("stop", "guest1", "operator-ui")
    assert Event.objects.filter(verb="stop", actor="operator-ui").exists()
    assert client.post(f"/clusters/{c}/domains/new/", {"name": "x"}).status_code == 403
    assert client.get(f"/clusters/{c}/services/new/").status_code == 403


def test_refused_operation_is_a_plain_message(world: dict[str, Any]) -> None:
    client = login("operator")
    c, s = world["cluster"].pk, world["service"].pk
    world["service"].desired_state = "disabled"
    world["service"].save()
    response = client.post(f"/clusters/{c}/services/{s}/start/", follow=True)
    assert "guest1 is disabled: enable it first." in text(response)


def test_migrate_page_explains_blocked_targets(world: dict[str, Any], live_view: Any) -> None:
    live_view.beat(*world["hosts"])
    client = login("operator")
    c, s = world["cluster"].pk, world["service"].pk
    body = text(client.get(f"/clusters/{c}/services/{s}/migrate/"))
    assert "already running on et-virt05" in body  # the engine's own words
    assert "et-virt07 is not a member of restricted domain prefer5" in body
    assert 'id="target-et-virt06" data-accepted="1"' in body and "best" in body
    assert "GiB free" in body
    bad = client.post(f"/clusters/{c}/services/{s}/migrate/", {"host": "et-virt07"})
    assert bad.status_code == 409
    assert "not a member of restricted domain prefer5" in text(bad)
    unknown = client.post(f"/clusters/{c}/services/{s}/migrate/", {"host": "nope"})
    assert unknown.status_code == 400 and "There is no host" in text(unknown)
    ok = client.post(f"/clusters/{c}/services/{s}/migrate/", {"host": "et-virt06"})
    assert ok.status_code == 302
    assert PendingCommand.objects.get().node == "et-virt06"


def test_migrate_disabled_with_reason_when_not_migratable(
    world: dict[str, Any], live_view: Any
) -> None:
    live_view.beat(*world["hosts"])
    world["service"].migratable = False
    world["service"].save()
    client = login("operator")
    c, s = world["cluster"].pk, world["service"].pk
    body = text(client.get(f"/clusters/{c}/services/{s}/migrate/"))
    assert "cannot be migrated now: cannot be live-migrated; relocate it instead" in body
    assert 'type="submit" class="primary" disabled' in body


def test_domain_create_edit_and_errors_next_to_fields(world: dict[str, Any]) -> None:
    client = login("admin")
    c = world["cluster"].pk
    h5, h6, _ = world["hosts"]
    bad = client.post(
        f"/clusters/{c}/domains/new/",
        {"name": "bad name!", f"priority_{h5.pk}": "0", "restricted": "on"},
    )
    body = text(bad)
    assert bad.status_code == 200
    assert "is not a valid name" in body
    assert "Ensure this value is greater than or equal to 1" in body
    assert 'id="field-name"' in body and "Traceback" not in body
    dup = client.post(f"/clusters/{c}/domains/new/", _domain("prefer5", h5, h6))
    assert "already has a failover domain named prefer5" in text(dup)
    restricted = client.post(f"/clusters/{c}/domains/new/", {"name": "r", "restricted": "on"})
    assert "needs at least one member" in text(restricted)
    ok = client.post(f"/clusters/{c}/domains/new/", _domain("both", h5, h6, ordered="on"))
    assert ok.status_code == 302
    domain = FailoverDomain.objects.get(name="both")
    assert domain.ordered and [(m.host.name, m.priority) for m in domain.members.all()] == [
        ("et-virt05", 1),
        ("et-virt06", 3),
    ]
    assert Event.objects.filter(verb="create", object_name="both", actor="admin-ui").exists()
    edit = client.post(f"/clusters/{c}/domains/{domain.pk}/", _domain("both", h6, None))
    assert edit.status_code == 302
    assert [m.host.name for m in domain.members.all()] == ["et-virt06"]


def _domain(name: str, a: Any, b: Any, **flags: str) -> dict[str, str]:
    data = {"name": name, f"member_{a.pk}": "on", f"priority_{a.pk}": "1", **flags}
    if b is not None:
        data.update({f"member_{b.pk}": "on", f"priority_{b.pk}": "3"})
    return data


def test_delete_domain_refused_while_used(world: dict[str, Any]) -> None:
    client = login("admin")
    c, d = world["cluster"].pk, world["domain"].pk
    response = client.post(f"/clusters/{c}/domains/{d}/delete/")
    assert response.status_code == 409
    assert "Failover domain prefer5 is used by service guest1" in text(response)
    assert FailoverDomain.objects.filter(pk=d).exists()
    assert Event.objects.filter(verb="delete", result="refused").exists()
    VmService.objects.update(failover_domain=None)
    assert client.post(f"/clusters/{c}/domains/{d}/delete/").status_code == 302
    assert not FailoverDomain.objects.filter(pk=d).exists()


XML = "<domain type='qemu'><name>{}</name><memory unit='KiB'>32768</memory><vcpu>1</vcpu></domain>"


def test_service_form_errors_and_create(world: dict[str, Any]) -> None:
    client = login("admin")
    c = world["cluster"].pk
    empty = client.post(f"/clusters/{c}/services/new/", {"recovery": "restart"})
    assert "Paste the guest's libvirt XML, or import a file." in text(empty)
    broken = client.post(f"/clusters/{c}/services/new/", _service("g2", "<domain><name>g2</name"))
    assert broken.status_code == 200 and "Traceback" not in text(broken)
    assert "field-error" in text(broken)
    mismatch = client.post(f"/clusters/{c}/services/new/", _service("g2", XML.format("other")))
    assert "names the guest 'other'" in text(mismatch)
    ok = client.post(f"/clusters/{c}/services/new/", _service("", XML.format("g2")))
    assert ok.status_code == 302
    service = VmService.objects.get(name="g2")
    assert service.memory_mb == 32 and service.recovery == "relocate"
    assert Event.objects.filter(verb="create", object_name="g2").exists()


def test_service_from_uploaded_xml_file(world: dict[str, Any]) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    client = login("admin")
    c = world["cluster"].pk
    upload = SimpleUploadedFile("g3.xml", XML.format("g3").encode(), "text/xml")
    data = {**_service("", ""), "xml_file": upload}
    assert client.post(f"/clusters/{c}/services/new/", data).status_code == 302
    assert VmService.objects.filter(name="g3").exists()


def _service(name: str, xml: str) -> dict[str, str]:
    return {
        "name": name,
        "domain_xml": xml,
        "recovery": "relocate",
        "max_restarts": "0",
        "restart_window_s": "0",
        "max_relocations": "1",
        "priority": "0",
        "migratable": "on",
        "autostart": "on",
    }


def test_service_remove_refused_while_running(world: dict[str, Any]) -> None:
    client = login("admin")
    c, s = world["cluster"].pk, world["service"].pk
    refused = client.post(f"/clusters/{c}/services/{s}/delete/")
    assert refused.status_code == 409 and "disable it first" in text(refused)
    VmService.objects.update(state="disabled", desired_state="disabled")
    assert client.post(f"/clusters/{c}/services/{s}/delete/").status_code == 302
    assert not VmService.objects.filter(pk=s).exists()


def test_acknowledge_down_and_maintenance(world: dict[str, Any]) -> None:
    client = login("operator")
    c = world["cluster"].pk
    h7 = world["hosts"][2]
    assert "Acknowledge down" not in text(client.get(f"/clusters/{c}/live/"))
    h7.state = "unreachable"
    h7.save()
    live = text(client.get(f"/clusters/{c}/live/"))
    assert f"/clusters/{c}/hosts/{h7.pk}/acknowledge-down/" in live
    response = client.post(f"/clusters/{c}/hosts/{h7.pk}/acknowledge-down/", follow=True)
    assert "et-virt07 acknowledged down" in text(response)
    h7.refresh_from_db()
    assert h7.acknowledged_down_by == "operator-ui"
    on = client.post(f"/clusters/{c}/hosts/{world['hosts'][1].pk}/maintenance/", {"on": "1"})
    assert on.status_code == 302
    assert "Leave maintenance" in text(client.get(f"/clusters/{c}/live/"))
    again = client.post(
        f"/clusters/{c}/hosts/{world['hosts'][1].pk}/maintenance/", {"on": "1"}, follow=True
    )
    assert "et-virt06 is already in maintenance." in text(again)


def test_an_unexpected_error_shows_a_plain_page(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.test import Client

    from console.clusters import views

    def boom(*_: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(views, "live_context", boom)
    client = Client(raise_request_exception=False)
    client.force_login(User.objects.create_user("plain", password="pw-for-tests-only"))
    User.objects.get(username="plain").groups.add(Group.objects.get(name="viewer"))
    response = client.get(f"/clusters/{world['cluster'].pk}/")
    assert response.status_code == 500
    body = text(response)
    assert "Something went wrong" in body
    assert "Traceback" not in body and "secret internals" not in body


def test_the_host_page_offers_the_domains_it_is_not_in(world: dict[str, Any]) -> None:
    c, domain = world["cluster"], world["domain"]
    third = world["hosts"][2]  # in no domain, as a host just added
    admin = login("admin")
    page = text(admin.get(f"/clusters/{c.pk}/hosts/{third.pk}/"))
    row = page.split('id="domain-prefer5"', 1)[1].split("</tr>", 1)[0]
    assert 'id="join-prefer5"' in row and 'name="priority" value="3"' in row  # after 1 and 2
    url = f"/clusters/{c.pk}/hosts/{third.pk}/join-domain/"
    done = admin.post(url, {"domain": str(domain.pk), "priority": "3"}, follow=True)
    assert f"{third.name} is a member of prefer5 (priority 3)." in text(done)
    members = {m.host.name: m.priority for m in domain.members.all()}
    assert members == {"et-virt05": 1, "et-virt06": 2, third.name: 3}  # the others kept
    assert Event.objects.filter(verb="update", object_name="prefer5").exists()
    row = text(admin.get(f"/clusters/{c.pk}/hosts/{third.pk}/")).split('id="domain-prefer5"')[1]
    assert "member, priority 3" in row.split("</tr>", 1)[0]
    # refused, in plain words, and nothing changed
    other = f.FailoverDomainFactory(cluster=f.ClusterFactory(name="other"), name="elsewhere")
    for data, words in (
        ({"domain": str(domain.pk), "priority": "4"}, "already a member of prefer5"),
        ({"domain": str(other.pk), "priority": "1"}, "Choose a failover domain of cluster et"),
        ({"domain": "x", "priority": "1"}, "Choose a failover domain of cluster et"),
    ):
        assert words in text(admin.post(url, data, follow=True)), data
    first = world["hosts"][0]
    FailoverDomain.objects.create(cluster=c, name="spare")
    spare = FailoverDomain.objects.get(name="spare")
    bad = admin.post(
        f"/clusters/{c.pk}/hosts/{first.pk}/join-domain/",
        {"domain": str(spare.pk), "priority": "0"},
        follow=True,
    )
    assert "from 1 (best) to 100" in text(bad)
    assert not spare.members.exists()
    assert {m.host.name: m.priority for m in domain.members.all()} == members
