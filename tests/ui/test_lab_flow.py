"""The console in a browser against the real lab: three lab hosts (namespaces with their own
sshd and libvirtd), the real SSH bootstrap started from the wizard (real host keys, per-host
root passwords), the real console worker and beat, real agents on the hosts, the tick guest
started by the HA engine and live-migrated between libvirtds.

What stays out: creating VGs and GFS2 here (lab hosts share this machine's /dev, and the
kernel has neither device-mapper nor gfs2): the storage tab is only probed, read-only. The
simulated flow (test_console_flow.py) covers storage writes.

Marked ``lab`` like tests/lab (same lab root, so never run two lab sessions at once).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from playwright.sync_api import expect

from tests.lab import harness
from tests.lab.harness import HOSTS, haven_lab
from tests.ui.conftest import log_in, make_user

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]
OVERRIDES = {"HAVEN_FENCE_ACTION": "off", "HAVEN_STOP_TIMEOUT_S": "3"}


@pytest.fixture
def lab_runtime(live_server: Any, settings: Any) -> Iterator[haven_lab.Lab]:
    reason = haven_lab.namespace_support()
    if reason is not None:
        pytest.skip(f"lab hosts need network namespaces: {reason}")
    lab = haven_lab.Lab(harness.TEST_ROOT)
    lab.destroy()
    try:
        lab.create(HOSTS)
    except haven_lab.LabError as exc:
        lab.destroy()
        pytest.fail(f"lab could not be created: {exc}")
    harness.reset_agent_logs()
    lab_redis = harness.LabRedis(lab.root)
    lab_redis.start()
    settings.REDIS_URL = settings.CELERY_BROKER_URL = lab_redis.url
    settings.HAVEN_AGENT_BROKER_URL = lab_redis.agent_url
    settings.HAVEN_WAKE_ON_COMMAND = True
    from console.celery import app, use_broker

    previous = app.conf.broker_url
    use_broker(lab_redis.url)
    console = harness.Console(
        lab_redis.url, harness.db_url(settings), lab.root / "console-logs", **OVERRIDES
    )
    console.start()
    try:
        yield lab
    finally:
        console.stop()
        lab.destroy()
        lab_redis.stop()
        use_broker(previous)


def test_lab_flow(live_server: Any, page: Any, shot: Any, lab_runtime: haven_lab.Lab) -> None:
    import article

    lab = lab_runtime
    base = live_server.url
    make_user("ada", "admin")
    log_in(page, base, "ada")
    page.goto(f"{base}/clusters/new/")
    page.fill("input[name=name]", "lab")
    for i, name in enumerate(HOSTS):
        page.fill(f"input[name=hosts-{i}-name]", name)
        page.fill(f"input[name=hosts-{i}-address]", lab.host(name).address)
    page.check("input[value=each]")
    page.click("button[value=scan]")
    expect(page.locator("code.fingerprint")).to_have_count(3)
    for i, name in enumerate(HOSTS):
        page.fill(f"input[name=hosts-{i}-password]", lab.host(name).root_password)
    page.check("input[name=confirm]")
    shot(page, "lab-01-wizard")
    page.click("button[value=create]")
    expect(page).to_have_url(re.compile(r"/jobs/\d+/"))
    expect(page.locator("#bootstrap-steps tbody tr")).to_have_count(3)
    shot(page, "lab-02-bootstrap-running")
    expect(page.locator("#job-live")).to_have_attribute("data-status", "succeeded", timeout=180_000)
    for name in HOSTS:
        assert lab.host(name).root_password not in page.content()
    shot(page, "lab-03-bootstrap-done")
    page.click("text=Open cluster lab")
    for name in HOSTS:
        expect(page.locator(f"#host-{name}")).to_have_attribute(
            "data-state", "online", timeout=30_000
        )

    page.click("#host-et-virt05 >> text=Storage")
    page.click("#probe")
    expect(page.locator("#storage-jobs")).to_contain_text("succeeded", timeout=30_000)
    shot(page, "lab-04-storage-probed")

    page.click("text=Failover domains")
    page.click("text=New failover domain")
    page.fill("input[name=name]", "prefer05")
    page.check("input[name=ordered]")
    page.locator("#members tr:has-text('et-virt05') input[type=checkbox]").check()
    page.locator("#members tr:has-text('et-virt06') input[type=checkbox]").check()
    page.locator("#members tr:has-text('et-virt06') input[type=number]").fill("2")
    page.click("button:has-text('Save')")

    kernel = article.build_guest_kernel(lab.root)
    page.click("text=Hosts & services")
    page.click("text=New VM service")
    page.fill("textarea[name=domain_xml]", article._render_guest("web1", kernel))
    page.select_option("select[name=failover_domain]", label="prefer05")
    page.click("button:has-text('Save')")
    row = page.locator("#service-web1")
    expect(row).to_have_attribute("data-state", "started", timeout=60_000)
    expect(row).to_have_attribute("data-host", "et-virt05")
    shot(page, "lab-05-service-green")

    row.locator("text=Migrate…").click()
    page.check("input[value=et-virt07]")
    page.click("#migrate-form button[type=submit]")
    page.evaluate("window.__notReloaded = true")
    expect(row).to_have_attribute("data-host", "et-virt07", timeout=60_000)
    expect(row).to_have_attribute("data-state", "started")
    assert page.evaluate("window.__notReloaded") is True
    shot(page, "lab-06-migrated")
    assert "web1" in harness.running_guests(harness.unix_uri(lab.host("et-virt07"))) or set()

    page.click("text=Failover domains")
    page.click("#domain-prefer05 >> text=Delete")
    page.click("button:has-text('Delete')")
    expect(page.locator("#delete-error")).to_contain_text("used by service web1")
    shot(page, "lab-07-domain-delete-refused")
    assert settings.HAVEN_WAKE_ON_COMMAND
