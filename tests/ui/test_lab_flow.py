"""The console in a browser against the real lab: three lab hosts (namespaces with their own
sshd and libvirtd), the real SSH bootstrap started from the wizard (real host keys, per-host
root passwords), the real console worker and beat, real agents on the hosts, the tick guest
started by the HA engine and live-migrated between libvirtds.

Storage is real too, on a loop device this test attaches (a sparse file; detached afterwards)
and a private LVM configuration that accepts only that device (LAB.md "Storage on loop
devices"): the agents get ``LVM_SYSTEM_DIR`` through the bootstrap (``HAVEN_AGENT_ENV``), so
the machine's own LVM setup and every other loop device stay untouched. In the browser: probe,
a clustered VG refused (no lvmlockd here), a local VG created, then an LV with GFS2 in one job:
lvcreate succeeds (metadata only, ``activation = 0``) and formatting fails because the LV has
no device node (this kernel has no device-mapper), which the storage tab says in plain words.

Marked ``lab`` like tests/lab (same lab root, so never run two lab sessions at once).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from playwright.sync_api import expect

from console.storage import services as storage_services
from tests.lab import harness
from tests.lab.harness import HOSTS, haven_lab
from tests.ui.conftest import log_in, make_user

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]
OVERRIDES = harness.LAB_OVERRIDES


LVM_CONF = """\
devices {{
    filter = [ "a|^{device}$|", "r|.*|" ]
    use_devicesfile = 0
}}
activation {{
    udev_sync = 0
    udev_rules = 0
}}
global {{
    activation = 0
}}
"""


@dataclass
class LabDisk:
    """A loop device of this test's own and the LVM configuration that sees only it."""

    device: str
    lvm_dir: Path

    def lvm(self, *argv: str) -> str:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
        env |= {"LVM_SYSTEM_DIR": str(self.lvm_dir), "LVM_SUPPRESS_FD_WARNINGS": "1"}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
        return done.stdout


@pytest.fixture
def lab_disk(tmp_path: Path, settings: Any) -> Iterator[LabDisk]:
    """A 256 MiB sparse file on a free loop device (``losetup -f``), detached afterwards, and
    ``HAVEN_AGENT_ENV`` pointing the agents the bootstrap installs at its LVM configuration."""
    missing = [p for p in ("losetup", "pvcreate", "mkfs.gfs2") if shutil.which(p) is None]
    if missing:
        pytest.skip(f"storage in the lab needs {', '.join(missing)} (lvm2, gfs2-utils)")
    image = tmp_path / "shared-disk.img"
    with image.open("wb") as f:
        f.truncate(256 * 1024 * 1024)
    done = subprocess.run(
        ["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"no free loop device: {done.stderr.strip()}")
    device = done.stdout.strip()
    try:
        assert re.fullmatch(r"/dev/loop\d+", device), device
        lvm_dir = tmp_path / "lvm"
        lvm_dir.mkdir()
        (lvm_dir / "lvm.conf").write_text(LVM_CONF.format(device=device))
        settings.HAVEN_AGENT_ENV = {
            "LVM_SYSTEM_DIR": str(lvm_dir),
            "LVM_SUPPRESS_FD_WARNINGS": "1",
        }
        yield LabDisk(device, lvm_dir)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


@pytest.fixture
def lab_runtime(live_server: Any, settings: Any) -> Iterator[haven_lab.Lab]:
    lab = harness.fresh_lab()
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


def test_lab_flow(
    live_server: Any, page: Any, shot: Any, lab_disk: LabDisk, lab_runtime: haven_lab.Lab
) -> None:
    import article

    lab = lab_runtime
    disk = lab_disk
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

    # --- storage: a real VG and LV on this test's loop device ---------------------------------
    page.click("#host-et-virt05 >> text=Storage")
    page.click("#probe")
    probe_row = page.locator("#storage-jobs tr", has_text="storage-probe")
    expect(probe_row).to_have_attribute("data-status", "succeeded", timeout=30_000)
    expect(page.locator("#devices")).to_contain_text(disk.device)
    page.wait_for_load_state("networkidle")  # the forms refresh once the job is done
    shot(page, "lab-04-storage-probed")

    def fill_vg(local: bool) -> None:
        page.locator("#vg-form label", has_text=f"{disk.device} (loop").locator("input").check()
        page.fill("#vg-form input[name=name]", "vg_lab")
        if local:
            page.check("#vg-form input[name=local]")
        page.click("#vg-form button[type=submit]")

    fill_vg(local=False)  # clustered: this machine has no lvmlockd
    vg_row = page.locator("#storage-jobs tr", has_text="storage-vg-create")
    expect(vg_row).to_have_attribute("data-status", "failed", timeout=30_000)
    expect(vg_row.locator(".outcome")).to_have_text(
        storage_services.NO_LVMLOCKD.format(host="et-virt05")
    )
    expect(vg_row.locator(".agent-said")).to_contain_text(
        "vgcreate on et-virt05 failed: clustered locking unavailable: lvmlockd is not running"
    )
    expect(vg_row.locator(".job-step[data-kind=pvcreate]")).to_have_attribute(
        "data-status", "succeeded"
    )
    expect(page.locator("#vg-vg_lab")).to_have_count(0)
    page.wait_for_load_state("networkidle")
    shot(page, "lab-04a-storage-vg-needs-lvmlockd")

    fill_vg(local=True)
    expect(page.locator("#vg-vg_lab")).to_contain_text("local", timeout=30_000)
    expect(page.locator("#vg-vg_lab")).to_contain_text("252.0 MiB")  # 256 MiB less metadata
    expect(page.locator("#vg-vg_lab")).to_contain_text(disk.device)
    expect(page.locator(f"#dev-{disk.device.replace('/', '')}")).to_contain_text("vg_lab")
    page.wait_for_load_state("networkidle")
    shot(page, "lab-04b-storage-vg-created")

    page.select_option("#lv-form select[name=volume_group]", label="vg_lab")
    page.fill("#lv-form input[name=name]", "vms")
    page.fill("#lv-form input[name=size_mib]", "64")
    expect(page.locator("#lv-form input[name=journals]")).to_have_value("3")
    page.click("#lv-form button[type=submit]")
    gfs2_row = page.locator("#storage-jobs tr", has_text="storage-gfs2-create")
    expect(gfs2_row).to_have_attribute("data-status", "failed", timeout=30_000)
    steps = gfs2_row.locator(".job-step")
    expect(steps).to_have_count(4)  # lvcreate, mkfs_gfs2, 3 fstab_entry, 3 mount
    for i, (kind, status) in enumerate(
        [
            ("lvcreate", "succeeded"),
            ("mkfs_gfs2", "failed"),
            ("fstab_entry", "skipped"),
            ("mount", "skipped"),
        ]
    ):
        expect(steps.nth(i)).to_have_attribute("data-kind", kind)
        expect(steps.nth(i)).to_have_attribute("data-status", status)
    # what the real mkfs.gfs2 says here, and the same in plain words
    expect(gfs2_row.locator(".agent-said")).to_have_text(
        "mkfs_gfs2 on et-virt05 failed: mkfs.gfs2 exited 1: /dev/vg_lab/vms: "
        "No such file or directory"
    )
    expect(gfs2_row.locator(".outcome")).to_have_text(
        storage_services.NO_DEVICE_NODE.format(device="/dev/vg_lab/vms")
    )
    expect(page.locator("#lv-vms")).to_contain_text("64.0 MiB")
    assert "Traceback" not in page.content()
    page.wait_for_load_state("networkidle")
    shot(page, "lab-04c-storage-lv-created-format-failed")
    # LVM's own view through the same private configuration: the VG and LV are real
    assert disk.lvm("vgs", "--noheadings", "-o", "vg_name,pv_count", "vg_lab").split() == [
        "vg_lab",
        "1",
    ]
    assert disk.lvm(
        "lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_name,lv_size", "vg_lab"
    ).split() == ["vms", str(64 * 1024 * 1024)]
    assert not Path("/dev/vg_lab/vms").exists()
    gfs2_row.locator("a").click()
    expect(page.locator("#job-outcome")).to_contain_text("formatting failed: no device node")
    shot(page, "lab-04d-storage-gfs2-job")
    page.go_back()

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
