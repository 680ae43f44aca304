"""The storage tab and its services: probe, clustered VG (and the error without lvmlockd),
LV + GFS2 in one job (formatted but not mounted where the kernel lacks gfs2), extend; and the
same operations through the API (202 with the job)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from rest_framework.test import APIClient

from agent.protocol import MountArgs
from console.jobs import services as jobs
from console.jobs.models import Job, JobStep
from console.storage.models import MIB, BlockDevice, Filesystem, LogicalVolume, VolumeGroup
from tests.console import factories as f
from tests.console.views_support import login, text

PROBE = {
    "blockdevices": [
        {"name": "loop3", "path": "/dev/loop3", "size": 256 * MIB, "type": "loop"},
        {
            "name": "sdb",
            "path": "/dev/sdb",
            "size": 1024 * MIB,
            "type": "disk",
            "children": [{"name": "sdb1", "path": "/dev/sdb1", "size": 512 * MIB, "type": "part"}],
        },
    ],
    "pvs": [],
    "vgs": [],
    "lvs": [],
}


@pytest.fixture
def hosts(db: None) -> list[Any]:
    cluster = f.ClusterFactory(name="et")
    return [f.HostFactory(cluster=cluster, name=f"et-virt0{i}", state="online") for i in (5, 6, 7)]


def answer(
    step: JobStep, ok: bool = True, data: dict[str, Any] | None = None, error: str = ""
) -> None:
    jobs.apply_result(
        {
            "id": step.command_id,
            "ok": ok,
            "data": data or {},
            "error": None if ok else {"message": error},
        },
        sender=step.host.name if step.host else None,
    )


def run_job(
    job: Job, results: dict[str, Any] | None = None, fail: dict[str, str] | None = None
) -> None:
    """Play the agents: answer every step of the job, stage by stage."""
    for step in job.steps.order_by("stage", "seq"):
        step.refresh_from_db()
        if step.status != "pending" and step.status != "dispatched":
            continue
        if fail and step.kind in fail:
            answer(step, ok=False, error=fail[step.kind])
        else:
            answer(step, data=(results or {}).get(step.kind, {}))


def test_probe_fills_devices_and_shows_a_spinner_while_running(hosts: list[Any]) -> None:
    client = login("admin")
    host = hosts[0]
    url = f"/clusters/{host.cluster_id}/hosts/{host.pk}/storage/"
    assert "Not probed yet" in text(client.get(url))
    live = text(client.post(url + "probe/", HTTP_HX_REQUEST="true"))
    assert "Probing et-virt05" in live and 'hx-trigger="every 1s"' in live
    job = Job.objects.get(kind="storage-probe")
    run_job(job, {"storage_probe": PROBE})
    assert sorted(BlockDevice.objects.values_list("path", "kind")) == [
        ("/dev/loop3", "loop"),
        ("/dev/sdb", "disk"),
        ("/dev/sdb1", "part"),
    ]
    page = text(client.get(url))
    assert "/dev/sdb1" in page and "Probing" not in page


def _probed(host: Any) -> list[BlockDevice]:
    return [
        f.BlockDeviceFactory(host=host, path=p, kind="loop", size_bytes=256 * MIB)
        for p in ("/dev/loop3", "/dev/loop4")
    ]


def test_vg_without_lvmlockd_shows_the_agents_error(hosts: list[Any]) -> None:
    client = login("admin")
    host = hosts[0]
    devices = _probed(host)
    url = f"/clusters/{host.cluster_id}/hosts/{host.pk}/storage/"
    response = client.post(
        url + "vg/", {"name": "vg_et", "devices": [d.pk for d in devices], "extent_size_mib": "4"}
    )
    assert response.status_code == 302
    job = Job.objects.get(kind="storage-vg-create")
    # a clustered VG: every host joins its lockspace, then every host reports it
    assert [(s.kind, s.stage) for s in job.steps.all()] == [
        ("pvcreate", 0),
        ("pvcreate", 0),
        ("vgcreate", 1),
        *[("vg_lockstart", 2)] * len(hosts),
        *[("storage_probe", 3)] * len(hosts),
    ]
    assert job.steps.get(kind="vgcreate").args == {
        "vg": "vg_et",
        "devices": ["/dev/loop3", "/dev/loop4"],
        "local": False,
        "extent_size_bytes": 4 * MIB,
    }
    run_job(
        job,
        fail={"vgcreate": "clustered locking unavailable: lvmlockd is not running on this host"},
    )
    page = text(client.get(url))
    assert (
        "clustered locking unavailable on et-virt05: lvmlockd is not running there, so no "
        'clustered volume group can be made; tick "Local VG (no clustered locking)"' in page
    )
    assert "vgcreate on et-virt05 failed: clustered locking unavailable: lvmlockd" in page
    assert not VolumeGroup.objects.exists()


def test_local_vg_then_gfs2_formatted_not_mounted_then_extend(hosts: list[Any]) -> None:
    client = login("admin")
    host = hosts[0]
    devices = _probed(host)
    url = f"/clusters/{host.cluster_id}/hosts/{host.pk}/storage/"
    client.post(
        url + "vg/",
        {
            "name": "vg_et",
            "devices": [d.pk for d in devices],
            "extent_size_mib": "4",
            "local": "on",
        },
    )
    vg_job = Job.objects.get(kind="storage-vg-create")
    assert vg_job.steps.get(kind="vgcreate").args["local"] is True
    probe = {
        **PROBE,
        "blockdevices": [
            *PROBE["blockdevices"],
            {"name": "loop4", "path": "/dev/loop4", "size": 256 * MIB, "type": "loop"},
        ],
        "pvs": [
            {"pv_name": "/dev/loop3", "vg_name": "vg_et"},
            {"pv_name": "/dev/loop4", "vg_name": "vg_et"},
        ],
        "vgs": [
            {"vg_name": "vg_et", "vg_size": 504 * MIB, "vg_free": 504 * MIB, "vg_lock_type": ""}
        ],
    }
    run_job(vg_job, {"vgcreate": {"vg": "vg_et", "shared": False}, "storage_probe": probe})
    vg = VolumeGroup.objects.get()
    assert (vg.clustered, vg.size_bytes, vg.extent_size_bytes) == (False, 504 * MIB, 4 * MIB)
    assert sorted(vg.physical_volumes.values_list("path", flat=True)) == [
        "/dev/loop3",
        "/dev/loop4",
    ]

    form = text(client.get(url))
    assert 'name="journals"' in form and 'value="3"' in form  # one per host
    few = client.post(
        url + "lv/",
        {"volume_group": vg.pk, "name": "vms", "size_mib": "64", "journals": "2"},
        follow=True,
    )
    assert "Only 2 journal(s) for 3 hosts" in text(few)
    job = Job.objects.get(kind="storage-gfs2-create")
    kinds = [(s.kind, s.stage, s.host.name) for s in job.steps.select_related("host")]
    assert kinds[:2] == [("lvcreate", 0, "et-virt05"), ("mkfs_gfs2", 1, "et-virt05")]
    assert sorted(k for k in kinds if k[0] == "mount") == [
        ("mount", 3, f"et-virt0{i}") for i in (5, 6, 7)
    ]
    mkfs = job.steps.get(kind="mkfs_gfs2")
    assert mkfs.args == {"device": "/dev/vg_et/vms", "cluster": "et", "fs": "vms", "journals": 2}
    assert job.steps.filter(kind="fstab_entry", args__mount_point="/mnt/vms").count() == 3
    run_job(
        job,
        {"lvcreate": {"size_bytes": 64 * MIB}, "mkfs_gfs2": {"journals": 2}},
        fail={"mount": "the kernel lacks 'gfs2' (not in /proc/filesystems)"},
    )
    fs = Filesystem.objects.get()
    assert (fs.name, fs.journals, fs.mount_point, fs.lock_table) == ("vms", 2, "/mnt/vms", "et:vms")
    page = text(client.get(url))
    assert "formatted; not mounted: the kernel has no gfs2" in page
    assert "formatted; not mounted: the kernel has no gfs2" in text(client.get(f"/jobs/{job.pk}/"))

    lv = LogicalVolume.objects.get()
    small = client.post(url + f"lv/{lv.pk}/extend/", {"size_mib": "32"})
    assert "already 64 MiB: give a larger size" in text(small)
    assert client.post(url + f"lv/{lv.pk}/extend/", {"size_mib": "128"}).status_code == 302
    extend = Job.objects.get(kind="storage-lv-extend")
    run_job(extend, {"lvextend": {"size_bytes": 128 * MIB}})
    lv.refresh_from_db()
    assert lv.size_bytes == 128 * MIB


def test_storage_form_errors(hosts: list[Any]) -> None:
    client = login("admin")
    host = hosts[0]
    url = f"/clusters/{host.cluster_id}/hosts/{host.pk}/storage/"
    body = text(client.post(url + "vg/", {"name": "-bad", "extent_size_mib": "3"}))
    assert "is not a valid volume group name" in body
    assert "This field is required." in body  # devices
    assert "must be a power of two" in body
    vg = f.VolumeGroupFactory(cluster=host.cluster, name="vg1")
    lv = text(
        client.post(
            url + "lv/",
            {
                "volume_group": vg.pk,
                "name": "snapshotx",
                "size_mib": "1",
                "journals": "0",
                "mount_point": "rel/path",
            },
        )
    )
    assert "is reserved by LVM" in lv
    assert "greater than or equal to 8" in lv
    assert "give an absolute path" in lv


def test_storage_api_actions_answer_202_with_the_job(
    hosts: list[Any], admin_api: APIClient
) -> None:
    host = hosts[0]
    probe = admin_api.post("/api/block-devices/probe/", {"host": "et-virt05"}, format="json")
    assert probe.status_code == 202 and probe.json()["steps"][0]["kind"] == "storage_probe"
    _probed(host)
    vg = admin_api.post(
        "/api/volume-groups/create-on-host/",
        {"host": "et-virt05", "name": "vg_api", "devices": ["/dev/loop3"], "local": True},
        format="json",
    )
    assert vg.status_code == 202, vg.json()
    missing = admin_api.post(
        "/api/volume-groups/create-on-host/",
        {"host": "et-virt05", "name": "vg2", "devices": ["/dev/sdz"]},
        format="json",
    )
    assert (
        missing.status_code == 400 and "no probed device /dev/sdz" in missing.json()["devices"][0]
    )
    group = f.VolumeGroupFactory(cluster=host.cluster, name="vg_x")
    gfs2 = admin_api.post(
        "/api/logical-volumes/create-gfs2/",
        {"host": "et-virt05", "volume_group": group.pk, "name": "data", "size_bytes": 64 * MIB},
        format="json",
    )
    assert gfs2.status_code == 202
    assert {s["kind"] for s in gfs2.json()["steps"]} == {
        "lvcreate",
        "lv_activate",  # a clustered VG's LV: created inactive, then active shared everywhere
        "mkfs_gfs2",
        "fstab_entry",
        "mount",
    }
    lv = f.LogicalVolumeFactory(volume_group=group, name="old", size_bytes=64 * MIB)
    grow = admin_api.post(
        f"/api/logical-volumes/{lv.pk}/extend/",
        {"host": "et-virt05", "size_bytes": 128 * MIB},
        format="json",
    )
    assert grow.status_code == 202


def test_storage_api_is_admin_only(hosts: list[Any], operator_api: APIClient) -> None:
    assert (
        operator_api.post(
            "/api/block-devices/probe/", {"host": "et-virt05"}, format="json"
        ).status_code
        == 403
    )


def test_gfs2_without_a_device_node_says_so_in_plain_words(hosts: list[Any]) -> None:
    """Without device-mapper LVM writes the LV's metadata but creates no /dev/VG/LV node: the
    tab says the LV exists and why formatting failed, with the agent's words and the steps."""
    client = login("admin")
    host = hosts[0]
    vg = f.VolumeGroupFactory(cluster=host.cluster, name="vg_et", free_bytes=504 * MIB)
    url = f"/clusters/{host.cluster_id}/hosts/{host.pk}/storage/"
    client.post(
        url + "lv/", {"volume_group": vg.pk, "name": "vms", "size_mib": "64", "journals": "3"}
    )
    job = Job.objects.get(kind="storage-gfs2-create")
    agent_error = "mkfs.gfs2 exited 1: /dev/vg_et/vms: No such file or directory"
    run_job(job, {"lvcreate": {"size_bytes": 64 * MIB}}, fail={"mkfs_gfs2": agent_error})
    job.refresh_from_db()
    assert job.status == "failed"
    plain = (
        "logical volume created; formatting failed: no device node /dev/vg_et/vms for the LV "
        "(LVM could not activate it: this host's kernel has no device-mapper, or activation is off)"
    )
    page = text(client.get(url))
    assert plain in page
    assert f"mkfs_gfs2 on et-virt05 failed: {agent_error}" in page  # the agent's own words
    assert "Traceback" not in page
    steps = re.findall(r'data-kind="(\w+)" data-status="(\w+)"', page)
    assert steps == [
        ("lvcreate", "succeeded"),
        ("lv_activate", "succeeded"),
        ("mkfs_gfs2", "failed"),
        ("fstab_entry", "skipped"),
        ("mount", "skipped"),
    ]
    assert "<code>fstab_entry</code> \N{MULTIPLICATION SIGN}3" in page
    assert LogicalVolume.objects.get().name == "vms" and not Filesystem.objects.exists()
    assert plain in text(client.get(f"/jobs/{job.pk}/"))


def test_gfs2_other_failures_keep_the_agents_words(hosts: list[Any]) -> None:
    host = hosts[0]
    vg = f.VolumeGroupFactory(cluster=host.cluster, name="vg_et")
    from console.storage import services

    for failing, error, expected in [
        (
            "lvcreate",
            "lvcreate exited 5: Volume group has insufficient free space",
            "creating the logical volume failed: lvcreate exited 5: Volume group has "
            "insufficient free space",
        ),
        (
            "mkfs_gfs2",
            "mkfs.gfs2 exited 1: Device is too small",
            "logical volume created; formatting failed: mkfs.gfs2 exited 1: Device is too small",
        ),
    ]:
        job = services.create_gfs2_volume(
            host, vg, name=f"lv_{failing}", size_bytes=64 * MIB, actor="tester"
        )
        run_job(job, fail={failing: error})
        job.refresh_from_db()
        assert services.outcome(job) == expected


def test_devices_in_use_are_not_offered_for_a_volume_group() -> None:
    from console.storage.services import in_use

    disk = {
        "name": "vda",
        "path": "/dev/vda",
        "size": 10 * MIB,
        "type": "disk",
        "children": [
            {
                "name": "vda1",
                "path": "/dev/vda1",
                "size": 9 * MIB,
                "type": "part",
                "fstype": "ext4",
                "mountpoint": "/",
            }
        ],
    }
    assert in_use(disk) == "mounted at /"
    assert in_use(disk["children"][0]) == "mounted at /"
    assert in_use({"path": "/dev/sdb", "size": MIB, "fstype": "xfs"}) == "holds a xfs file system"
    assert in_use({"path": "/dev/zram0", "size": 0}) == "empty (0 bytes)"
    assert in_use({"path": "/dev/sdc", "size": MIB, "fstype": "LVM2_member"}) == ""
    assert in_use({"path": "/dev/loop3", "size": 64 * MIB}) == ""


def _mounted_gfs2(hosts: list[Any]) -> tuple[Any, Any]:
    vg = f.VolumeGroupFactory(cluster=hosts[0].cluster, name="vg_shared", clustered=True)
    lv = f.LogicalVolumeFactory(volume_group=vg, name="guest_roots", size_bytes=1024 * MIB)
    fs = f.FilesystemFactory(logical_volume=lv, name="guest_roots", mount_point="/guest_roots")
    return lv, fs


def test_add_journals_from_the_tab_and_the_api(hosts: list[Any], admin_api: APIClient) -> None:
    client = login("admin")
    host = hosts[0]
    lv, fs = _mounted_gfs2(hosts)
    url = f"/clusters/{host.cluster_id}/hosts/{host.pk}/storage/"
    assert f"lv/{lv.pk}/journals/" in text(client.get(url))
    page = text(client.get(url + f"lv/{lv.pk}/journals/"))
    assert "has 3 journal(s) and is mounted at /guest_roots" in page
    assert "between" not in page
    too_many = client.post(url + f"lv/{lv.pk}/journals/", {"journals": "17"})
    assert too_many.status_code == 400 and "less than or equal to 16" in text(too_many)
    assert client.post(url + f"lv/{lv.pk}/journals/", {"journals": "1"}).status_code == 302
    job = Job.objects.get(kind="storage-gfs2-jadd")
    step = job.steps.get()
    assert (step.kind, step.host.name, step.args) == (
        "gfs2_jadd",
        "et-virt05",
        {"mount_point": "/guest_roots", "journals": 1},
    )
    run_job(job, {"gfs2_jadd": {"mount_point": "/guest_roots", "journals_added": 1}})
    fs.refresh_from_db()
    assert fs.journals == 4
    assert f"storage-gfs2-jadd #{job.pk}" in text(client.get(url))  # a recent storage job
    api = admin_api.post(
        f"/api/filesystems/{fs.pk}/add-journals/", {"host": "et-virt06"}, format="json"
    )
    assert api.status_code == 202 and api.json()["steps"][0]["kind"] == "gfs2_jadd"
    hosts[2].state = "unreachable"
    hosts[2].save()
    down = admin_api.post(
        f"/api/filesystems/{fs.pk}/add-journals/", {"host": "et-virt07"}, format="json"
    )
    assert down.status_code == 400 and "et-virt07 is unreachable" in down.json()["host"][0]


def test_remove_is_refused_with_the_reason_then_works_with_unmount(
    hosts: list[Any], admin_api: APIClient
) -> None:
    client = login("admin")
    host = hosts[0]
    lv, _fs = _mounted_gfs2(hosts)
    url = f"/clusters/{host.cluster_id}/hosts/{host.pk}/storage/"
    assert f"lv/{lv.pk}/remove/" in text(client.get(url))
    assert client.post(url + f"lv/{lv.pk}/remove/", {}).status_code == 302
    job = Job.objects.get(kind="storage-lv-remove")
    assert {s.kind for s in job.steps.all()} == {
        "lv_usage",
        "lv_activate",
        "lvremove",
        "storage_probe",
    }  # no unmount asked: the hosts check first, nothing changes where it is mounted
    run_job(job, fail={"lv_usage": "vg_shared/guest_roots is mounted at /guest_roots: "
                                   "unmount it first"})  # fmt: skip
    job.refresh_from_db()
    assert job.status == "failed"
    assert not job.steps.filter(kind="lvremove", status="succeeded").exists()
    page = text(client.get(url))
    assert "is mounted at /guest_roots: unmount it first" in page
    assert LogicalVolume.objects.filter(pk=lv.pk).exists()

    # the API, with unmount: unmount + fstab line (and its boot unit) dropped everywhere first
    removed = admin_api.post(
        f"/api/logical-volumes/{lv.pk}/remove/",
        {"host": "et-virt05", "unmount": True},
        format="json",
    )
    assert removed.status_code == 202
    job = Job.objects.get(pk=removed.json()["id"])
    stages = sorted({(s.stage, s.kind) for s in job.steps.all()})
    assert stages[:2] == [(0, "unmount"), (1, "fstab_entry")]
    fstab = job.steps.filter(kind="fstab_entry").first()
    assert fstab is not None and fstab.args["present"] is False
    assert fstab.args["activate_shared"] is True
    run_job(job)
    assert not LogicalVolume.objects.filter(pk=lv.pk).exists()
    assert not Filesystem.objects.exists()


def test_remove_is_refused_while_guests_have_disks_on_it(
    hosts: list[Any], admin_api: APIClient
) -> None:
    lv, _fs = _mounted_gfs2(hosts)
    xml = f.domain_xml("web1").replace(
        "</domain>",
        "<devices><disk type='file' device='disk'><source file='/guest_roots/web1.qcow2'/>"
        "<target dev='vda'/></disk></devices></domain>",
    )
    f.VmServiceFactory(cluster=hosts[0].cluster, name="web1", domain_xml=xml)
    refused = admin_api.post(
        f"/api/logical-volumes/{lv.pk}/remove/", {"host": "et-virt05"}, format="json"
    )
    assert refused.status_code == 400
    assert "it holds the disks of web1" in refused.json()["lv"][0]
    client = login("admin")
    url = f"/clusters/{hosts[0].cluster_id}/hosts/{hosts[0].pk}/storage/lv/{lv.pk}/remove/"
    assert "Refused now: it holds the disks of web1" in text(client.get(url))
    assert not Job.objects.filter(kind="storage-lv-remove").exists()


def test_gfs2_blocked_waiting_for_fence_is_shown(hosts: list[Any]) -> None:
    from console.storage import services

    client = login("admin")
    host = hosts[0]
    _mounted_gfs2(hosts)
    url = f"/clusters/{host.cluster_id}/hosts/{host.pk}/storage/"
    assert "blocked waiting for fence" not in text(client.get(url))
    hosts[2].state, hosts[2].state_reason = "fencing", "fence attempt 1"
    hosts[2].save()
    page = text(client.get(url))
    assert "GFS2 guest_roots blocked waiting for fence" in page
    assert "until et-virt07 is fenced or acknowledged down" in page and "fence attempt 1" in page
    hosts[2].state = "fenced"
    hosts[2].save()
    ack = services.dlm_fence_ack(hosts[2])
    assert ack is not None
    page = text(client.get(url))
    assert f"et-virt07 is fenced; telling dlm on et-virt05, et-virt06 (job {ack.pk})" in page
    run_job(ack)
    assert "blocked waiting for fence" not in text(client.get(url))


def test_where_a_gfs2_is_mounted_follows_mounts_unmounts_and_probes(hosts: list[Any]) -> None:
    client = login("admin")
    host = hosts[0]
    _lv, fs = _mounted_gfs2(hosts)
    url = f"/clusters/{host.cluster_id}/hosts/{host.pk}/storage/"
    assert "not mounted" in text(client.get(url))
    for h in hosts:
        job = jobs.create_job(
            "storage-gfs2-create",
            [jobs.StepSpec.of(h, MountArgs("/dev/vg_shared/guest_roots", "/guest_roots", "gfs2"))],
            cluster=h.cluster,
        )
        run_job(job, {"mount": {"mount_point": "/guest_roots", "changed": True}})
    fs.refresh_from_db()
    assert fs.mounted_on == ["et-virt05", "et-virt06", "et-virt07"]
    assert 'data-hosts="et-virt05,et-virt06,et-virt07"' in text(client.get(url))
    # a probe of et-virt06 that no longer lists the mount (lsblk: the LV under the LUN)
    child = {"name": "vg_shared-guest_roots", "type": "lvm", "size": 1024 * MIB,
             "path": "/dev/mapper/vg_shared-guest_roots", "mountpoint": None}  # fmt: skip
    lun = {"name": "vdb", "path": "/dev/vdb", "size": 2048 * MIB, "type": "disk",
           "serial": "shared0", "children": [child]}  # fmt: skip
    probe = jobs.create_job(
        "storage-probe", [jobs.StepSpec(hosts[1], "storage_probe", {})], cluster=host.cluster
    )
    run_job(probe, {"storage_probe": {**PROBE, "blockdevices": [lun]}})
    fs.refresh_from_db()
    assert fs.mounted_on == ["et-virt05", "et-virt07"]
    child["mountpoint"] = "/guest_roots"
    probe = jobs.create_job(
        "storage-probe", [jobs.StepSpec(hosts[1], "storage_probe", {})], cluster=host.cluster
    )
    run_job(probe, {"storage_probe": {**PROBE, "blockdevices": [lun]}})
    fs.refresh_from_db()
    assert fs.mounted_on == ["et-virt05", "et-virt06", "et-virt07"]
    unmount = jobs.create_job(
        "storage-lv-remove",
        [jobs.StepSpec(hosts[2], "unmount", {"mount_point": "/guest_roots"})],
        cluster=host.cluster,
    )
    run_job(unmount, {"unmount": {"mount_point": "/guest_roots", "changed": True}})
    fs.refresh_from_db()
    assert fs.mounted_on == ["et-virt05", "et-virt06"]
