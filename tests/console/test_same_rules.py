"""The API and the pages refuse the same things, with the same reason: every rule lives in the
services layer (issue 11), and nothing is changed by a refused request."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from console.clusters import services as cluster_services
from console.clusters.forms import HostRowForm
from console.clusters.models import Cluster
from console.core.errors import Refused
from console.events.models import Event
from console.jobs.models import Job
from console.services.models import VmService
from console.storage import services as storage_services
from tests.console import factories as f
from tests.console.views_support import login, text

STATES_THAT_RUN = ["started", "starting", "migrating", "stopping", "relocating", "recovering"]


@pytest.mark.parametrize("state", STATES_THAT_RUN)
def test_running_service_is_not_deleted_by_the_api_or_the_page(
    admin_api: APIClient, state: str
) -> None:
    service = f.VmServiceFactory(state=state)
    response = admin_api.delete(f"/api/services/{service.pk}/")
    assert response.status_code == 409, response.content
    reason = response.json()["detail"]
    assert reason == f"{service.name} is {state}: disable it first, then remove it."
    page = login("admin", "page-admin").post(
        f"/clusters/{service.cluster_id}/services/{service.pk}/delete/"
    )
    assert page.status_code == 409 and reason in text(page)
    assert VmService.objects.filter(pk=service.pk, state=state).exists()
    assert (
        Event.objects.filter(verb="delete", result="refused", object_name=service.name).count() == 2
    )


def test_stopped_service_is_deleted(admin_api: APIClient) -> None:
    service = f.VmServiceFactory(state="disabled", desired_state="disabled")
    assert admin_api.delete(f"/api/services/{service.pk}/").status_code == 204
    assert not VmService.objects.filter(pk=service.pk).exists()


def test_mounted_device_never_becomes_a_volume_group(admin_api: APIClient) -> None:
    host = f.HostFactory(name="et-virt05", state="online")
    f.BlockDeviceFactory(host=host, path="/dev/sdb", in_use="mounted at /srv")
    response = admin_api.post(
        "/api/volume-groups/create-on-host/",
        {"host": "et-virt05", "name": "vg0", "devices": ["/dev/sdb"], "local": True},
        format="json",
    )
    assert response.status_code == 400, response.content
    assert "/dev/sdb is in use (mounted at /srv)" in response.json()["devices"][0]
    with pytest.raises(Refused, match="in use"):
        storage_services.create_volume_group(
            host, "vg0", list(host.block_devices.all()), actor="page", local=True
        )
    assert not Job.objects.exists()


def test_cluster_with_hosts_is_not_deleted(admin_api: APIClient) -> None:
    host = f.HostFactory(name="et-virt05")
    f.VmServiceFactory(cluster=host.cluster)
    response = admin_api.delete(f"/api/clusters/{host.cluster_id}/")
    assert response.status_code == 409
    assert "still has host et-virt05: remove it first" in response.json()["detail"]
    assert Cluster.objects.filter(pk=host.cluster_id).exists()
    assert VmService.objects.filter(cluster=host.cluster_id).exists()  # no cascade
    empty = f.ClusterFactory()
    assert admin_api.delete(f"/api/clusters/{empty.pk}/").status_code == 204


def test_fence_test_of_another_clusters_device_is_404(db: None) -> None:
    mine = f.HostFactory(state="online")
    other = f.FenceDeviceFactory()
    client = login("admin")
    response = client.post(f"/clusters/{mine.cluster_id}/fence/{other.pk}/test/")
    assert response.status_code == 404
    with pytest.raises(Refused, match="not a device of cluster"):
        cluster_services.fence_test(mine.cluster, other, actor="page")
    assert not Job.objects.exists()


@pytest.mark.parametrize("name", ["haven-console", "HAVEN-CONSOLE", "edge-agent"])
def test_reserved_host_names(admin_api: APIClient, settings: Any, name: str) -> None:
    settings.HAVEN_CONSOLE_AGENT = "edge-agent"
    cluster = f.ClusterFactory()
    response = admin_api.post(
        "/api/hosts/", {"cluster": cluster.pk, "name": name, "address": "10.0.0.1"}, format="json"
    )
    assert response.status_code == 400
    reason = response.json()["name"][0]
    assert "reserved for the console's own agent" in reason
    row = HostRowForm({"name": name, "address": "10.0.0.1", "port": "22"})
    assert not row.is_valid() and row.errors["name"] == [reason]
