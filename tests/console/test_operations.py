"""Operations through the API: each impossible request is a clear 400/409 and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from console.ha.models import PendingCommand
from console.jobs.models import Job
from tests.console import factories as f


@pytest.fixture
def world(db: None, live_view: Any) -> dict[str, Any]:
    cluster = f.ClusterFactory(name="et")
    a = f.HostFactory(cluster=cluster, name="et-virt05", state="online", memory_total_mb=8192)
    b = f.HostFactory(cluster=cluster, name="et-virt06", state="online", memory_total_mb=8192)
    c = f.HostFactory(cluster=cluster, name="et-virt07", state="offline", memory_total_mb=8192)
    only_a = f.FailoverDomainFactory(cluster=cluster, name="only-05", restricted=True)
    f.FailoverDomainMemberFactory(domain=only_a, host=a)
    web = f.VmServiceFactory(cluster=cluster, name="web", state="started", host=a)
    licensed = f.VmServiceFactory(
        cluster=cluster, name="licensed", state="started", host=a, failover_domain=only_a
    )
    pinned = f.VmServiceFactory(
        cluster=cluster, name="pinned", state="started", host=a, migratable=False
    )
    off = f.VmServiceFactory(
        cluster=cluster, name="off", state="disabled", desired_state="disabled"
    )
    live_view.beat(a, b)  # et-virt07 is silent: the engine sees it offline
    return {"a": a, "b": b, "c": c, "web": web, "licensed": licensed, "pinned": pinned, "off": off}


def post(api: APIClient, path: str, body: dict[str, Any] | None = None) -> Any:
    return api.post(path, body or {}, format="json")


CASES = [
    ("start a disabled service", "off", "start", None, 409, "disabled: enable it first"),
    ("migrate a disabled service", "off", "migrate", "et-virt06", 409, "disabled"),
    ("migrate to an offline host", "web", "migrate", "et-virt07", 409, "et-virt07 is offline"),
    (
        "migrate outside a restricted domain",
        "licensed",
        "migrate",
        "et-virt06",
        409,
        "not a member of restricted domain only-05",
    ),
    (
        "migrate a non-migratable guest",
        "pinned",
        "migrate",
        "et-virt06",
        409,
        "cannot be live-migrated",
    ),
    (
        "migrate to an unknown host",
        "web",
        "migrate",
        "et-virt99",
        400,
        "There is no host 'et-virt99'",
    ),
    ("migrate to where it runs", "web", "migrate", "et-virt05", 409, "already running on"),
    ("relocate without a target", "web", "relocate", "", 400, "may not be blank"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_refused_operations(
    operator_api: APIClient, world: dict[str, Any], case: tuple[str, str, str, str | None, int, str]
) -> None:
    _, service, kind, host, status, words = case
    body = {"host": host} if host is not None else None
    response = post(operator_api, f"/api/services/{world[service].pk}/{kind}/", body)
    assert response.status_code == status, response.content
    assert words in response.content.decode()
    assert Job.objects.count() == 0 and PendingCommand.objects.count() == 0


def test_accepted_operation_returns_its_job(operator_api: APIClient, world: dict[str, Any]) -> None:
    response = post(
        operator_api, f"/api/services/{world['web'].pk}/migrate/", {"host": "et-virt06"}
    )
    assert response.status_code == 202
    job = response.json()
    assert (job["kind"], job["status"], job["params"]) == (
        "migrate",
        "pending",
        {"service": "web", "target": "et-virt06"},
    )
    command = PendingCommand.objects.get()
    assert (command.kind, command.node, command.job_id) == ("migrate", "et-virt06", job["id"])


def test_best_target_follows_placement(operator_api: APIClient, world: dict[str, Any]) -> None:
    response = post(operator_api, f"/api/services/{world['web'].pk}/migrate/", {"host": "best"})
    assert response.status_code == 202
    assert response.json()["params"]["target"] == "et-virt06"  # the only other online host


def test_viewer_cannot_operate(viewer_api: APIClient, world: dict[str, Any]) -> None:
    assert post(viewer_api, f"/api/services/{world['web'].pk}/stop/").status_code == 403
    assert (
        post(viewer_api, f"/api/hosts/{world['a'].pk}/maintenance/", {"on": True}).status_code
        == 403
    )
    assert Job.objects.count() == 0


def test_operator_cannot_edit_configuration(operator_api: APIClient, world: dict[str, Any]) -> None:
    response = operator_api.patch(
        f"/api/services/{world['web'].pk}/", {"priority": 5}, format="json"
    )
    assert response.status_code == 403


def test_desired_state_changes_only_through_operations(
    admin_api: APIClient, world: dict[str, Any]
) -> None:
    response = admin_api.patch(
        f"/api/services/{world['web'].pk}/", {"desired_state": "stopped"}, format="json"
    )
    assert response.status_code == 400
    assert "stop" in str(response.json()["desired_state"])


def test_maintenance_and_acknowledge_down(operator_api: APIClient, world: dict[str, Any]) -> None:
    a, c = world["a"], world["c"]
    on = post(operator_api, f"/api/hosts/{a.pk}/maintenance/", {"on": True})
    assert on.status_code == 202 and on.json()["status"] == "succeeded"
    again = post(operator_api, f"/api/hosts/{a.pk}/maintenance/", {"on": True})
    assert again.status_code == 409 and "already in maintenance" in again.json()["detail"]
    bad = post(operator_api, f"/api/hosts/{a.pk}/maintenance/", {"on": "perhaps"})
    assert bad.status_code == 400 and "on" in bad.json()
    online = post(operator_api, f"/api/hosts/{world['b'].pk}/acknowledge-down/")
    assert online.status_code == 409 and "is online" in online.json()["detail"]
    ack = post(operator_api, f"/api/hosts/{c.pk}/acknowledge-down/")
    assert ack.status_code == 202
    c.refresh_from_db()
    assert c.acknowledged_down_by == "operator-user" and c.acknowledged_down_at is not None
