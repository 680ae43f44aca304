"""The console in a real browser, end to end: log in → the wizard creates a cluster from the
lab hosts → the storage tab builds a VG and an LV with GFS2 → a failover domain → a VM
service turns green → migrate, and the new host shows without a reload → deleting the domain
is refused while the service uses it. A screenshot of every page lands in var/screenshots/.

Agents are simulated in the test process (console/ha/fakes.py); the console, its job dispatcher
and the HA runner are the real ones. The SSH bootstrap is replaced by tests/console/
fake_bootstrap.py (same interface), whose host keys and step results the test decides.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from console.clusters import views as cluster_views
from console.ha.fakes import KERNEL_HAS_GFS2
from tests.console.fake_bootstrap import FakeBootstrap
from tests.ui.conftest import log_in, make_user

pytestmark = pytest.mark.django_db(transaction=True)

LAB = {"et-virt05": "10.88.0.5", "et-virt06": "10.88.0.6", "et-virt07": "10.88.0.7"}
KEYS = {addr: f"SHA256:{name}-ed25519-host-key" for name, addr in LAB.items()}
XML = (
    "<domain type='qemu'><name>web1</name><memory unit='KiB'>32768</memory><vcpu>1</vcpu>"
    "<os><type arch='x86_64' machine='pc'>hvm</type><kernel>/var/lab/tick.elf</kernel></os>"
    "</domain>"
)


@pytest.fixture
def bootstrap(monkeypatch: pytest.MonkeyPatch) -> FakeBootstrap:
    boot = FakeBootstrap(KEYS)
    monkeypatch.setattr(cluster_views, "_bootstrap", lambda: boot)
    return boot


def new_from_tab(page: Any, tab: str, button: str) -> None:
    """Open a tab of the cluster and its form for a new object."""
    page.click(f"text={tab}")
    page.click(f"text={button}")


def test_console_flow(
    live_server: Any, page: Any, shot: Any, sim: Any, bootstrap: FakeBootstrap
) -> None:
    base = live_server.url
    make_user("ada", "admin")
    page.goto(f"{base}/")
    expect(page).to_have_url(re.compile(r"/login/"))
    shot(page, "01-login")
    log_in(page, base, "ada")
    expect(page.locator("main")).to_contain_text("No cluster yet")
    shot(page, "02-home-empty")

    # --- the wizard ------------------------------------------------------------------------
    page.click("text=Create cluster")
    page.fill("input[name=name]", "lab")
    page.check("input[name=shared_storage]")
    for i, (name, address) in enumerate(LAB.items()):
        page.fill(f"input[name=hosts-{i}-name]", name)
        page.fill(f"input[name=hosts-{i}-address]", address)
    shot(page, "03-wizard-hosts")
    page.click("button[value=scan]")
    for address in LAB.values():
        expect(page.locator("#wizard")).to_contain_text(KEYS[address])
    page.fill("input[name=password]", "lab-root-pw")
    page.check("input[name=confirm]")
    shot(page, "04-wizard-fingerprints")
    page.click("button[value=create]")
    expect(page.locator("h1")).to_contain_text("Creating cluster lab")
    expect(page.locator("#bootstrap-steps tbody tr")).to_have_count(3)
    expect(page.locator("#job-live")).to_have_attribute("data-status", "succeeded", timeout=60_000)
    assert "lab-root-pw" not in page.content()
    shot(page, "05-bootstrap-progress")
    page.click("text=Open cluster lab")
    for name in LAB:
        expect(page.locator(f"#host-{name}")).to_have_attribute("data-state", "online")
    shot(page, "06-cluster-hosts-online")

    # --- storage ---------------------------------------------------------------------------
    page.click("#host-et-virt05 >> text=Storage")
    expect(page.locator("main")).to_contain_text("Not probed yet")
    sim.delays["storage_probe"] = 1.5  # long enough to see the spinner
    page.click("#probe")
    expect(page.locator("#probing")).to_be_visible()
    expect(page.locator("#probing .spinner")).to_be_visible()
    shot(page, "07a-storage-probing")
    expect(page.locator("#devices")).to_contain_text("/dev/loop4")
    expect(page.locator("#probing")).to_have_count(0)
    shot(page, "07-storage-probed")
    page.fill("#vg-form input[name=name]", "vg_lab")
    page.check("#vg-form input[name=devices] >> nth=0")
    page.check("#vg-form input[name=devices] >> nth=1")
    expect(page.locator("#vg-form input[name=extent_size_mib]")).to_have_value("4")
    page.click("#vg-form button[type=submit]")
    expect(page.locator("#storage-jobs")).to_contain_text("clustered locking unavailable")
    shot(page, "08-storage-vg-needs-lvmlockd")
    page.fill("#vg-form input[name=name]", "vg_lab")
    page.check("#vg-form input[name=devices] >> nth=0")
    page.check("#vg-form input[name=devices] >> nth=1")
    page.check("#vg-form input[name=local]")
    page.click("#vg-form button[type=submit]")
    expect(page.locator("#vg-vg_lab")).to_contain_text("local")
    expect(page.locator("#vg-vg_lab")).to_contain_text("504.0 MiB")
    page.select_option("#lv-form select[name=volume_group]", label="vg_lab")
    page.fill("#lv-form input[name=name]", "vms")
    page.fill("#lv-form input[name=size_mib]", "64")
    expect(page.locator("#lv-form input[name=journals]")).to_have_value("3")
    page.click("#lv-form button[type=submit]")
    outcome = (
        "formatted and mounted on /mnt/vms on every host"
        if KERNEL_HAS_GFS2
        else "formatted; not mounted: the kernel has no gfs2"
    )
    expect(page.locator("#storage-jobs")).to_contain_text(outcome)
    expect(page.locator("#lv-vms")).to_contain_text("gfs2 vms")
    shot(page, "09-storage-gfs2")

    # --- failover domain -------------------------------------------------------------------
    new_from_tab(page, "Failover domains", "New failover domain")
    page.fill("input[name=name]", "prefer05")
    page.check("input[name=ordered]")
    page.check("input[name=restricted]")
    hosts = {h: page.locator(f"#members tr:has-text('{h}')") for h in LAB}
    hosts["et-virt05"].locator("input[type=checkbox]").check()
    hosts["et-virt06"].locator("input[type=checkbox]").check()
    hosts["et-virt06"].locator("input[type=number]").fill("2")
    shot(page, "10-domain-form")
    page.click("button:has-text('Save')")
    expect(page.locator("#domain-prefer05")).to_contain_text("et-virt05 (1), et-virt06 (2)")
    shot(page, "11-domains")

    # --- a VM service ----------------------------------------------------------------------
    new_from_tab(page, "Hosts & services", "New VM service")
    page.fill("textarea[name=domain_xml]", "<domain>broken")
    page.click("button:has-text('Save')")
    expect(page.locator("#field-domain_xml .field-error")).to_be_visible()
    shot(page, "12-service-form-error")
    page.fill("textarea[name=domain_xml]", XML)
    page.select_option("select[name=failover_domain]", label="prefer05")
    page.click("button:has-text('Save')")
    row = page.locator("#service-web1")
    expect(row).to_have_attribute("data-state", "started", timeout=20_000)
    expect(row).to_have_attribute("data-host", "et-virt05")
    expect(row.locator(".badge.green")).to_have_text("started")
    shot(page, "13-service-green")

    # --- migrate ---------------------------------------------------------------------------
    row.locator("text=Migrate…").click()
    expect(page.locator("label.target:has-text('et-virt07')")).to_contain_text(
        "et-virt07 is not a member of restricted domain prefer05"
    )
    expect(page.locator("input[value=et-virt07]")).to_be_disabled()
    shot(page, "14-migrate-form")
    page.check("input[value=et-virt06]")
    page.click("#migrate-form button[type=submit]")
    expect(page.locator(".messages")).to_contain_text("Live-migrating web1 to et-virt06")
    page.evaluate("window.__notReloaded = true")
    # every state the row shows, as the page updates it in place (a poll could miss one)
    page.evaluate(
        """() => {
            window.__states = [];
            const note = () => {
                const r = document.querySelector('#service-web1');
                if (r && window.__states[window.__states.length - 1] !== r.dataset.state)
                    window.__states.push(r.dataset.state);
            };
            note();
            new MutationObserver(note).observe(document.body,
                {subtree: true, childList: true, attributes: true});
        }"""
    )
    page.wait_for_function("() => window.__states.includes('migrating')", timeout=20_000)
    shot(page, "15-migrating")
    expect(row).to_have_attribute("data-host", "et-virt06", timeout=20_000)
    expect(row).to_have_attribute("data-state", "started")
    assert page.evaluate("window.__notReloaded") is True  # updated in place by htmx
    shot(page, "16-migrated")

    # --- deleting the domain is refused while web1 uses it -----------------------------------
    page.click("text=Failover domains")
    page.click("#domain-prefer05 >> text=Delete")
    page.click("button:has-text('Delete')")
    expect(page.locator("#delete-error")).to_contain_text(
        "Failover domain prefer05 is used by service web1"
    )
    shot(page, "17-domain-delete-refused")

    # --- jobs and the event log -------------------------------------------------------------
    page.goto(f"{base}/jobs/")
    expect(page.locator("#jobs")).to_contain_text("migrate")
    shot(page, "18-jobs")
    page.goto(f"{base}/events/?kind=delete")
    expect(page.locator("#events")).to_contain_text("refused")
    shot(page, "19-events-filtered")
    page.goto(f"{base}/")
    expect(page.locator("#clusters")).to_contain_text("3/3")
    shot(page, "20-home")
