"""Create, read, update, delete and filter every model through the API, as an admin."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from rest_framework.test import APIClient

from console.clusters.models import FenceDevice
from console.events.models import Event
from tests.console import factories as f


@dataclass
class Case:
    endpoint: str
    payload: Callable[[], dict[str, Any]]  # a valid create body (makes what it refers to)
    patch: dict[str, Any]  # a valid partial update
    filter_field: str  # a query parameter, filtered by the created object's value


def _host_payload() -> dict[str, Any]:
    return {"cluster": f.ClusterFactory().pk, "name": "et-virt42", "address": "10.88.0.42"}


def _fence_payload() -> dict[str, Any]:
    return f.fence_payload(
        plug="",
        parameters={"ip": "10.88.0.254", "lanplus": True},
        secret_parameters={"password": "s3cret"},
    )


def _domain_payload() -> dict[str, Any]:
    host = f.HostFactory()
    return {
        "cluster": host.cluster.pk,
        "name": "prefer-05",
        "ordered": True,
        "members": [{"host": host.pk, "priority": 1}],
    }


def _service_payload() -> dict[str, Any]:
    return {
        "cluster": f.ClusterFactory().pk,
        "name": "guest1",
        "domain_xml": f.domain_xml("guest1", memory_kib=1048576, vcpus=2),
    }


def _vg_payload() -> dict[str, Any]:
    device = f.BlockDeviceFactory()
    return {
        "cluster": device.host.cluster.pk,
        "name": "vg_cluster",
        "physical_volumes": [device.pk],
    }


CASES = [
    Case("clusters", lambda: {"name": "et-cluster"}, {"description": "lab"}, "name"),
    Case("hosts", _host_payload, {"address": "10.88.0.43"}, "name"),
    Case("fence-devices", _fence_payload, {"plug": "2"}, "agent"),
    Case(
        "block-devices",
        lambda: {"host": f.HostFactory().pk, "path": "/dev/sdz"},
        {"size_bytes": 1024},
        "kind",
    ),
    Case("volume-groups", _vg_payload, {"clustered": False}, "name"),
    Case(
        "logical-volumes",
        lambda: {"volume_group": f.VolumeGroupFactory().pk, "name": "vms", "size_bytes": 2**30},
        {"size_bytes": 2**31},
        "name",
    ),
    Case(
        "filesystems",
        lambda: {
            "logical_volume": f.LogicalVolumeFactory().pk,
            "name": "vms",
            "mount_point": "/mnt/vms",
            "journals": 3,
        },
        {"journals": 4},
        "name",
    ),
    Case("failover-domains", _domain_payload, {"nofailback": True}, "name"),
    Case("services", _service_payload, {"priority": 10}, "name"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.endpoint)
def test_crud(admin_api: APIClient, case: Case) -> None:
    url = f"/api/{case.endpoint}/"
    created = admin_api.post(url, case.payload(), format="json")
    assert created.status_code == 201, created.json()
    obj = created.json()
    detail = f"{url}{obj['id']}/"

    assert admin_api.get(detail).json()["id"] == obj["id"]
    listed = admin_api.get(url, {case.filter_field: obj[case.filter_field]}).json()
    assert [o["id"] for o in listed["results"]] == [obj["id"]]

    updated = admin_api.patch(detail, case.patch, format="json")
    assert updated.status_code == 200, updated.json()
    for key, value in case.patch.items():
        assert updated.json()[key] == value

    # a host is removed by a job (console/operations/membership.py): a new one at once
    removed = admin_api.delete(detail)
    assert removed.status_code == (202 if case.endpoint == "hosts" else 204), removed.content
    assert admin_api.get(detail).status_code == 404
    verbs = set(
        Event.objects.filter(
            object_type__in=[
                "cluster",
                "host",
                "fencedevice",
                "blockdevice",
                "volumegroup",
                "logicalvolume",
                "filesystem",
                "failoverdomain",
                "vmservice",
            ]
        ).values_list("verb", flat=True)
    )
    assert verbs == {"create", "update", "remove-host" if case.endpoint == "hosts" else "delete"}


def test_filters_select_and_reject_bad_values(admin_api: APIClient) -> None:
    a, b = f.HostFactory(), f.HostFactory()
    listed = admin_api.get("/api/hosts/", {"cluster": a.cluster.pk}).json()["results"]
    assert [h["name"] for h in listed] == [a.name]
    by_name = admin_api.get("/api/hosts/", {"cluster__name": b.cluster.name}).json()["results"]
    assert [h["name"] for h in by_name] == [b.name]
    assert admin_api.get("/api/hosts/", {"state": "online"}).json()["count"] == 0
    assert admin_api.get("/api/hosts/", {"state": "new"}).json()["count"] == 2
    bad_state = admin_api.get("/api/hosts/", {"state": "sleepy"})
    assert bad_state.status_code == 400 and "state" in bad_state.json()
    bad_id = admin_api.get("/api/hosts/", {"cluster": "abc"})
    assert bad_id.status_code == 400 and "cluster" in bad_id.json()


def test_fence_secrets_encrypted_and_never_shown(admin_api: APIClient) -> None:
    body = _fence_payload()
    response = admin_api.post("/api/fence-devices/", body, format="json")
    assert response.status_code == 201
    assert "s3cret" not in response.content.decode()
    assert response.json()["secret_keys"] == ["password"]
    device = FenceDevice.objects.get()
    assert "s3cret" not in device.secret_parameters_encrypted
    assert device.secret_parameters == {"password": "s3cret"}
    listed = admin_api.get("/api/fence-devices/").content.decode()
    assert "s3cret" not in listed
    assert "s3cret" not in str(list(Event.objects.values_list("message", "data")))


def test_service_memory_and_vcpus_come_from_xml(admin_api: APIClient) -> None:
    response = admin_api.post("/api/services/", _service_payload(), format="json")
    assert response.status_code == 201
    assert (response.json()["memory_mb"], response.json()["vcpus"]) == (1024, 2)
    detail = f"/api/services/{response.json()['id']}/"
    xml = f.domain_xml("guest1", memory_kib=2 * 1048576, vcpus=4)
    patched = admin_api.patch(detail, {"domain_xml": xml}, format="json").json()
    assert (patched["memory_mb"], patched["vcpus"]) == (2048, 4)


def test_domain_members_replaced_on_update(admin_api: APIClient) -> None:
    body = _domain_payload()
    domain = admin_api.post("/api/failover-domains/", body, format="json").json()
    other = f.HostFactory(cluster_id=body["cluster"])
    members = [
        {"host": other.pk, "priority": 2},
        {"host": body["members"][0]["host"], "priority": 5},
    ]
    patched = admin_api.patch(
        f"/api/failover-domains/{domain['id']}/", {"members": members}, format="json"
    )
    assert patched.status_code == 200
    got = sorted((m["host"], m["priority"]) for m in patched.json()["members"])
    assert got == sorted((m["host"], m["priority"]) for m in members)


def test_filesystem_lock_table(admin_api: APIClient) -> None:
    lv = f.LogicalVolumeFactory(volume_group__cluster__name="alpha")
    body = {"logical_volume": lv.pk, "name": "vms", "mount_point": "/mnt/vms"}
    response = admin_api.post("/api/filesystems/", body, format="json")
    assert response.json()["lock_table"] == "alpha:vms"
    assert response.json()["lock_protocol"] == "lock_dlm"


def test_jobs_and_events_are_read_only(admin_api: APIClient) -> None:
    job = f.JobEventFactory().job
    assert admin_api.get(f"/api/jobs/{job.pk}/").json()["status"] == "pending"
    events = admin_api.get("/api/job-events/", {"job": job.pk}).json()["results"]
    assert [e["seq"] for e in events] == [1]
    assert admin_api.post("/api/jobs/", {"kind": "x"}, format="json").status_code == 405
    assert admin_api.delete(f"/api/jobs/{job.pk}/").status_code == 405
    assert admin_api.post("/api/events/", {}, format="json").status_code == 405


def test_pagination(admin_api: APIClient) -> None:
    f.ClusterFactory.create_batch(7)
    page = admin_api.get("/api/clusters/", {"limit": 3, "offset": 3}).json()
    assert page["count"] == 7
    assert len(page["results"]) == 3
    assert page["next"] and page["previous"]
