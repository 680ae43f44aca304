"""Fence devices: the form is built from the agent's own metadata (read once by a host's
agent, then kept), secrets are stored encrypted, and "Test" runs ``status``."""

from __future__ import annotations

from typing import Any

import pytest

from console.clusters.models import FenceDevice
from console.jobs import services as jobs
from console.jobs.models import Job
from tests.console import factories as f
from tests.console.views_support import login, text

METADATA = {
    "name": "fence_ipmilan",
    "shortdesc": "Fence agent for IPMI",
    "actions": ["on", "off", "status", "metadata"],
    "parameters": [
        {"name": "action", "type": "string", "required": False, "default": "reboot"},
        {
            "name": "ip",
            "type": "string",
            "required": True,
            "description": "IP address or hostname of fencing device",
        },
        {
            "name": "ipport",
            "type": "integer",
            "required": False,
            "default": "623",
            "description": "TCP/UDP port",
        },
        {"name": "username", "type": "string", "required": False, "description": "Login name"},
        {
            "name": "password",
            "type": "string",
            "required": False,
            "secret": True,
            "description": "Login password or passphrase",
        },
        {"name": "lanplus", "type": "boolean", "required": False, "description": "Use Lanplus"},
        {"name": "cipher", "type": "string", "choices": ["0", "1", "3"], "required": False},
        {"name": "auth", "type": "string", "deprecated": True},
        {"name": "plug", "type": "string", "required": False},
    ],
}


@pytest.fixture
def hosts(db: None) -> list[Any]:
    cluster = f.ClusterFactory(name="et")
    return [f.HostFactory(cluster=cluster, name=f"et-virt0{i}", state="online") for i in (5, 6)]


def test_metadata_is_read_by_an_agent_then_builds_the_form(hosts: list[Any]) -> None:
    client = login("admin")
    c = hosts[0].cluster_id
    first = text(client.get(f"/clusters/{c}/fence/new/?agent=fence_ipmilan"))
    assert "Read the parameters of fence_ipmilan" in first
    client.post(f"/clusters/{c}/fence/metadata/", {"agent": "fence_ipmilan"})
    job = Job.objects.get(kind="fence-metadata")
    step = job.steps.get()
    assert (step.kind, step.args, step.host.name) == (
        "fence_metadata",
        {"agent": "fence_ipmilan"},
        "et-virt05",
    )
    waiting = text(client.get(f"/clusters/{c}/fence/new/?agent=fence_ipmilan"))
    assert "Asking a host's agent" in waiting
    jobs.apply_result({"id": step.command_id, "ok": True, "data": METADATA}, sender="et-virt05")
    poll = client.get(f"/clusters/{c}/fence/metadata/?agent=fence_ipmilan", HTTP_HX_REQUEST="true")
    assert poll["HX-Redirect"] == f"/clusters/{c}/fence/new/?agent=fence_ipmilan"
    form = text(client.get(f"/clusters/{c}/fence/new/?agent=fence_ipmilan"))
    for name in ("p_ip", "p_ipport", "p_username", "p_password", "p_lanplus", "p_cipher"):
        assert f'name="{name}"' in form, name
    assert 'name="p_auth"' not in form and 'name="p_action"' not in form
    assert "IP address or hostname of fencing device" in form
    assert 'type="password" name="p_password"' in form


def test_a_result_arriving_mid_poll_still_reaches_the_form(
    hosts: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The result lands between the poll's reads (CI saw it once: the page lost its spinner
    and its form, and polled no more): the poll still answers with the form's address."""
    from console.clusters import views

    client = login("admin")
    c = hosts[0].cluster_id
    client.post(f"/clusters/{c}/fence/metadata/", {"agent": "fence_ipmilan"})
    step = Job.objects.get(kind="fence-metadata").steps.get()
    read = views._metadata_job

    def read_then_result(agent: str) -> Any:
        job = read(agent)
        jobs.apply_result({"id": step.command_id, "ok": True, "data": METADATA}, sender="et-virt05")
        return job

    monkeypatch.setattr(views, "_metadata_job", read_then_result)
    poll = client.get(f"/clusters/{c}/fence/metadata/?agent=fence_ipmilan", HTTP_HX_REQUEST="true")
    assert poll["HX-Redirect"] == f"/clusters/{c}/fence/new/?agent=fence_ipmilan"


def test_a_failed_read_says_why_and_offers_another(hosts: list[Any]) -> None:
    client = login("admin")
    c = hosts[0].cluster_id
    client.post(f"/clusters/{c}/fence/metadata/", {"agent": "fence_ipmilan"})
    step = Job.objects.get(kind="fence-metadata").steps.get()
    error = {"code": "not_found", "message": "fence_ipmilan is not installed on et-virt05"}
    jobs.apply_result({"id": step.command_id, "ok": False, "error": error}, sender="et-virt05")
    poll = text(
        client.get(f"/clusters/{c}/fence/metadata/?agent=fence_ipmilan", HTTP_HX_REQUEST="true")
    )
    assert "Could not read the parameters" in poll and "not installed on et-virt05" in poll
    assert "hx-trigger" not in poll and "Read the parameters of fence_ipmilan" in poll
    client.post(f"/clusters/{c}/fence/metadata/", {"agent": "fence_ipmilan"})
    assert Job.objects.filter(kind="fence-metadata").count() == 2  # another read, when asked
    page = text(client.get(f"/clusters/{c}/fence/new/?agent=fence_ipmilan"))
    assert "Asking a host's agent" in page and "Could not read" not in page


def test_save_with_errors_next_to_fields_then_secret_encrypted(hosts: list[Any]) -> None:
    client = login("admin")
    c = hosts[0].cluster_id
    f.JobFactory(cluster=hosts[0].cluster, kind="fence-metadata")
    step_job = Job.objects.get()
    jobs.attach_steps(
        step_job, [jobs.StepSpec(hosts[0], "fence_metadata", {"agent": "fence_ipmilan"})]
    )
    jobs.apply_result(
        {"id": step_job.steps.get().command_id, "ok": True, "data": METADATA},
        sender=hosts[0].name,
    )
    url = f"/clusters/{c}/fence/new/?agent=fence_ipmilan"
    bad = text(
        client.post(
            url, {"agent": "fence_ipmilan", "name": "bad name", "order": "0", "host": hosts[0].pk}
        )
    )
    assert "is not a valid name" in bad
    assert "p_ip" in bad and "This field is required." in bad
    assert "greater than or equal to 1" in bad
    ok = client.post(
        url,
        {
            "agent": "fence_ipmilan",
            "name": "ipmi5",
            "host": hosts[0].pk,
            "order": "1",
            "plug": "",
            "p_ip": "10.88.0.254",
            "p_ipport": "16205",
            "p_username": "admin",
            "p_password": "bmc-secret-77",
            "p_lanplus": "on",
            "p_cipher": "3",
        },
    )
    assert ok.status_code == 302
    device = FenceDevice.objects.get()
    assert device.parameters == {
        "ip": "10.88.0.254",
        "ipport": "16205",
        "username": "admin",
        "lanplus": "1",
        "cipher": "3",
    }
    assert device.secret_parameters == {"password": "bmc-secret-77"}
    assert "bmc-secret-77" not in device.secret_parameters_encrypted
    listing = text(client.get(f"/clusters/{c}/fence/"))
    assert "password=***" in listing and "bmc-secret-77" not in listing
    edit = text(client.get(f"/clusters/{c}/fence/{device.pk}/"))
    assert "bmc-secret-77" not in edit and "leave empty to keep it" in edit


def test_test_button_runs_status_from_another_host(hosts: list[Any]) -> None:
    device = f.FenceDeviceFactory(
        cluster=hosts[0].cluster, host=hosts[0], name="ipmi5", plug="et-virt05"
    )
    device.secret_parameters = {"password": "s3"}
    device.save()
    client = login("admin")
    response = client.post(f"/clusters/{hosts[0].cluster_id}/fence/{device.pk}/test/")
    job = Job.objects.get(kind="fence-test")
    assert response["Location"] == f"/jobs/{job.pk}/"
    step = job.steps.select_related("host").get()
    assert step.kind == "fence" and step.host.name == "et-virt06"
    assert step.args["action"] == "status" and step.args["params"]["plug"] == "et-virt05"
    assert "s3" not in repr(step.args) and step.secret_ref == {"fence_device": device.pk}
    assert (
        login("operator")
        .post(f"/clusters/{hosts[0].cluster_id}/fence/{device.pk}/test/")
        .status_code
        == 403
    )


def test_fence_levels_are_listed_per_host_in_order_each_with_its_test_button(
    hosts: list[Any],
) -> None:
    cluster = hosts[0].cluster
    pdu = f.FenceDeviceFactory(cluster=cluster, host=hosts[0], name="pdu5", order=2, plug="4")
    ipmi = f.FenceDeviceFactory(cluster=cluster, host=hosts[0], name="ipmi5", order=1)
    client = login("admin")
    page = client.get(f"/clusters/{cluster.pk}/fence/").content.decode()
    levels = page.split('id="fence-levels-et-virt05"', 1)[1].split("</li>", 1)[0]
    assert "level 1 ipmi5" in levels and "level 2 pdu5" in levels
    assert levels.index("ipmi5") < levels.index("pdu5")
    assert "no fence device" in page.split('id="fence-levels-et-virt06"', 1)[1].split("</li>")[0]
    for device in (ipmi, pdu):  # each level has its own Test button
        assert f"/clusters/{cluster.pk}/fence/{device.pk}/test/" in page
        client.post(f"/clusters/{cluster.pk}/fence/{device.pk}/test/")
    tests = Job.objects.filter(kind="fence-test").order_by("pk")
    assert [j.params["device"] for j in tests] == ["ipmi5", "pdu5"]
    assert [j.steps.get().args["params"].get("plug") for j in tests] == [None, "4"]
