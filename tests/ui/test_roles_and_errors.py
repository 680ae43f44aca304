"""In the browser: a viewer sees no action buttons and gets 403 when posting anyway; the
wizard shows an unreachable host next to its address and a failed step's exact error; a fence
device form is built from the agent's metadata and its Test button runs ``status``."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from console.clusters import views as cluster_views
from console.jobs.models import JobStep
from tests.console import factories as f
from tests.console.fake_bootstrap import FakeBootstrap
from tests.ui.conftest import log_in, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def small_cluster() -> Any:
    cluster = f.ClusterFactory(name="lab")
    hosts = [
        f.HostFactory(cluster=cluster, name=f"et-virt0{i}", address=f"10.88.0.{i}", state="online")
        for i in (5, 6)
    ]
    for host in hosts:
        f.sealing_key(host.name)  # the bootstrap gave each agent its key (sealed secrets)
    domain = f.FailoverDomainFactory(cluster=cluster, name="prefer05")
    f.FailoverDomainMemberFactory(domain=domain, host=hosts[0])
    f.VmServiceFactory(
        cluster=cluster, name="web1", failover_domain=domain, state="started", host=hosts[0]
    )
    return cluster


def test_viewer_sees_no_buttons_and_gets_403(live_server: Any, page: Any, shot: Any) -> None:
    cluster = small_cluster()
    make_user("vic", "viewer")
    log_in(page, live_server.url, "vic")
    page.goto(f"{live_server.url}/clusters/{cluster.pk}/")
    expect(page.locator("#service-web1")).to_contain_text("started")
    shot(page, "30-viewer-cluster")
    for url in (
        f"/clusters/{cluster.pk}/",
        f"/clusters/{cluster.pk}/domains/",
        f"/clusters/{cluster.pk}/fence/",
        f"/clusters/{cluster.pk}/hosts/{cluster.hosts.first().pk}/storage/",
    ):
        page.goto(live_server.url + url)
        expect(page.locator("main button")).to_have_count(0)
        expect(page.locator("main a.button")).to_have_count(0)
    service = cluster.services.get()
    status = page.evaluate(
        """async (url) => {
            const token = document.cookie.match(/csrftoken=([^;]+)/)[1];
            const r = await fetch(url, {method: "POST", headers: {"X-CSRFToken": token}});
            return r.status;
        }""",
        f"/clusters/{cluster.pk}/services/{service.pk}/stop/",
    )
    assert status == 403
    page.goto(f"{live_server.url}/clusters/{cluster.pk}/services/{service.pk}/migrate/")
    expect(page.locator("#migrate-form button")).to_have_count(0)
    shot(page, "31-viewer-migrate-page")


def test_wizard_errors(
    live_server: Any, page: Any, shot: Any, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot = FakeBootstrap({"10.88.0.5": "SHA256:key5", "10.88.0.6": "SHA256:key6"})
    monkeypatch.setattr(cluster_views, "_bootstrap", lambda: boot)
    make_user("ada", "admin")
    log_in(page, live_server.url, "ada")
    page.goto(f"{live_server.url}/clusters/new/")
    page.fill("input[name=name]", "lab")
    page.fill("input[name=hosts-0-name]", "et-virt05")
    page.fill("input[name=hosts-0-address]", "10.88.0.5")
    page.fill("input[name=hosts-1-name]", "et-virt09")
    page.fill("input[name=hosts-1-address]", "10.88.0.9")
    page.click("button[value=scan]")
    expect(page.locator("#hostrow-1 .field-error")).to_contain_text(
        "Could not read the SSH host key: 10.88.0.9:22 is unreachable"
    )
    shot(page, "32-wizard-unreachable")
    page.fill("input[name=hosts-1-name]", "et-virt06")
    page.fill("input[name=hosts-1-address]", "10.88.0.6")
    page.click("button[value=scan]")
    page.click("button[value=create]")  # no password, not confirmed
    expect(page.locator("#field-password .field-error")).to_contain_text("Give the root password")
    expect(page.locator("#field-confirm .field-error")).to_contain_text("tick this box")
    shot(page, "33-wizard-missing-password")
    sim.fail_steps[("et-virt06", "bootstrap.connect")] = (
        "authentication failed for root@10.88.0.6: wrong password"
    )
    page.fill("input[name=password]", "wrong-for-06")
    page.check("input[name=confirm]")
    page.click("button[value=create]")
    expect(page).to_have_url(re.compile(r"/jobs/\d+/"))
    expect(page.locator("#bootstrap-et-virt06")).to_contain_text(
        "authentication failed for root@10.88.0.6: wrong password"
    )
    expect(page.locator("#job-live")).to_have_attribute("data-status", "failed")
    expect(page.locator("#job-progress.failed")).to_be_visible()
    assert "wrong-for-06" not in page.content()
    shot(page, "34-bootstrap-wrong-password")


def test_fence_device_from_metadata_and_test(
    live_server: Any, page: Any, shot: Any, sim: Any
) -> None:
    cluster = small_cluster()
    sim.running["et-virt05"] = {"web1"}
    sim.alive.update({"et-virt05", "et-virt06"})  # their agents heartbeat
    make_user("ada", "admin")
    log_in(page, live_server.url, "ada")
    page.goto(f"{live_server.url}/clusters/{cluster.pk}/fence/")
    page.click("text=New fence device")
    page.fill("input[name=agent]", "fence_haven_lab")
    page.click("button:has-text('Next')")
    sim.delays["fence_metadata"] = 1.0
    page.click("button:has-text('Read the parameters of fence_haven_lab')")
    expect(page.locator("#metadata-wait .spinner")).to_be_visible()
    # the form, once read: a job to the host's (simulated) agent and back, slow on a busy machine
    expect(page.locator("input[name=p_lab_root]")).to_be_visible(timeout=20_000)
    expect(page.locator("#field-p_lab_root")).to_contain_text("State directory of the lab")
    shot(page, "35-fence-form-from-metadata")
    page.fill("input[name=name]", "lab5")
    page.select_option("select[name=host]", label="et-virt05")
    page.click("button:has-text('Save')")
    expect(page.locator("#field-plug .field-error")).to_contain_text("required")
    page.fill("input[name=plug]", "et-virt05")
    page.fill("input[name=p_password]", "never-shown")
    page.click("button:has-text('Save')")
    expect(page.locator("#fence-lab5 td >> nth=3")).to_have_text("et-virt05")  # the plug
    expect(page.locator("#fence-lab5")).to_contain_text("password=***")
    shot(page, "36-fence-devices")
    page.click("#fence-lab5 >> text=Test")
    expect(page.locator("#job-live")).to_have_attribute("data-status", "succeeded")
    step = JobStep.objects.get(kind="fence")
    assert step.args["action"] == "status" and step.host.name == "et-virt06"
    assert "never-shown" not in repr(sim.sent)  # only the redacted copy is kept
    shot(page, "37-fence-test")
