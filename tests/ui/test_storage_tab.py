"""The storage tab in a browser: a clustered VG's GFS2 mounted on three hosts, one of them lost
and not yet fenced ("GFS2 ... blocked waiting for fence"), add journals and remove (refused with
the reason while guests' disks are on it). Data made directly; the storage lab
(tests/storage_lab) runs the same pages against real VMs."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from console.jobs.models import Job
from tests.console import factories as f
from tests.ui.conftest import log_in, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def test_storage_tab_blocked_gfs2_journals_and_remove(
    live_server: Any, page: Any, shot: Any
) -> None:
    cluster = f.ClusterFactory(name="havensv")
    hosts = [
        f.HostFactory(cluster=cluster, name=n, address=f"10.89.0.{i}", state="online")
        for i, n in ((11, "sv1"), (12, "sv2"), (13, "sv3"))
    ]
    vg = f.VolumeGroupFactory(
        cluster=cluster, name="vg_shared", clustered=True, size_bytes=2**31, free_bytes=2**29
    )
    lun = f.BlockDeviceFactory(host=hosts[0], path="/dev/vdb", serial="shared0", size_bytes=2**31,
                               volume_group_name="vg_shared")  # fmt: skip
    vg.physical_volumes.add(lun)
    lv = f.LogicalVolumeFactory(volume_group=vg, name="guest_roots", size_bytes=3 * 2**29)
    f.FilesystemFactory(logical_volume=lv, name="guest_roots", mount_point="/guest_roots",
                        journals=3, mounted_on=["sv1", "sv2", "sv3"])  # fmt: skip
    hosts[2].state, hosts[2].state_reason = "fencing", "fence attempt 1"
    hosts[2].save()
    make_user("ada", "admin")
    base = live_server.url
    log_in(page, base, "ada")
    page.goto(f"{base}/clusters/{cluster.pk}/hosts/{hosts[0].pk}/storage/")
    expect(page.locator("#lv-guest_roots .mounted-on")).to_have_attribute(
        "data-hosts", "sv1,sv2,sv3"
    )
    alarm = page.locator(".gfs2-blocked")
    expect(alarm).to_contain_text("GFS2 guest_roots blocked waiting for fence")
    expect(alarm).to_contain_text("until sv3 is fenced or acknowledged down")
    shot(page, "storage-gfs2-blocked-waiting-for-fence")

    page.click("#lv-guest_roots >> text=Add journals…")
    expect(page.locator("p.intro")).to_contain_text("has 3 journal(s)")
    page.fill("input[name=journals]", "1")
    page.click("form.card button[type=submit]")
    expect(page).to_have_url(re.compile(r"/storage/$"))
    job = Job.objects.get(kind="storage-gfs2-jadd")
    assert job.steps.get().args == {"mount_point": "/guest_roots", "journals": 1}
    expect(page.locator(f"#storage-job-{job.pk}")).to_be_visible()

    xml = f.domain_xml("web1").replace(
        "</domain>",
        "<devices><disk type='block' device='disk'><source dev='/dev/vg_shared/guest_roots'/>"
        "<target dev='vda'/></disk></devices></domain>",
    )
    f.VmServiceFactory(cluster=cluster, name="web1", domain_xml=xml)
    page.click("#lv-guest_roots >> text=Remove…")
    expect(page.locator("p.intro")).to_contain_text("Refused now: it holds the disks of web1")
    page.check("input[name=unmount]")
    page.click("form.card button[type=submit]")
    expect(page.locator(".errorlist, .error").first).to_contain_text("it holds the disks of web1")
    shot(page, "storage-remove-refused")
    assert not Job.objects.filter(kind="storage-lv-remove").exists()
