"""Storage operations: probe a host, create a (clustered) volume group, create a logical
volume with a GFS2 file system mounted on every host, extend a logical volume.

Each returns a job whose steps run on the hosts' agents. What the agents report comes back
through ``on_step_success`` hooks (in the result's transaction), which keep the storage rows
in step with the hosts: a probe replaces a host's block devices and refreshes volume groups
and logical volumes; ``vgcreate``/``lvcreate``/``mkfs_gfs2`` record what they made.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from django.db import transaction
from django.utils import timezone

from agent import protocol as proto
from console.clusters.choices import HostState
from console.clusters.models import Cluster, Host
from console.core.errors import Refused
from console.core.services import actor_name
from console.events.services import record
from console.jobs import services as jobs
from console.jobs.models import FINISHED_STATUSES, Job, JobStatus, JobStep, StepStatus
from console.storage.models import MIB, BlockDevice, Filesystem, LogicalVolume, VolumeGroup

DEFAULT_EXTENT = 4 * MIB
# A shared GFS2 mounts at boot only once the cluster stack is up, never blocking the boot when
# it cannot: the agent adds the LV's activation unit, which comes after haven-cluster-join
# (corosync quorate, then dlm, then lvmlockd: console/bootstrap/cluster_stack.py). Nothing here
# may pull dlm in by itself (x-systemd.requires=dlm.service started it at once at boot).
GFS2_FSTAB_OPTIONS = "noatime,_netdev,nofail"
LOCKED_VG_TYPES = frozenset({"dlm", "sanlock", "idm"})
NO_GFS2_KERNEL = "formatted; not mounted: the kernel has no gfs2"
NO_LVMLOCKD = (
    "clustered locking unavailable on {host}: lvmlockd is not running there, so no clustered "
    'volume group can be made; tick "Local VG (no clustered locking)" to make a local one'
)
NO_DEVICE_NODE = (
    "logical volume created; formatting failed: no device node {device} for the LV "
    "(LVM could not activate it: this host's kernel has no device-mapper, or activation is off)"
)


class StorageError(Refused):
    """A refused storage request (400); ``field`` names the form field it is about."""

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message, field=field)


# --- requests -------------------------------------------------------------------------------
def probe(host: Host, *, actor: Any) -> Job:
    """Ask the host what disks, partitions, PVs, VGs and LVs it has."""
    steps = [jobs.StepSpec.of(host, proto.StorageProbeArgs())]
    return _request(
        "storage-probe",
        steps,
        actor=actor,
        cluster=host.cluster,
        params={"host": host.name},
        doing=f"probe the storage of {host.name}",
        verb="storage-probe",
        name=host.name,
    )


def create_volume_group(
    host: Host,
    name: str,
    devices: list[BlockDevice],
    *,
    actor: Any,
    local: bool = False,
    extent_size_bytes: int = DEFAULT_EXTENT,
) -> Job:
    """pvcreate on each device, then vgcreate (``--shared`` unless ``local``), then a probe.

    ``local`` is only for a person who ticked "no clustered locking": without lvmlockd the
    agent refuses a shared VG ("clustered locking unavailable") and the job shows that.
    """
    if not devices:
        raise StorageError("Choose at least one device.", "devices")
    if VolumeGroup.objects.filter(cluster=host.cluster, name=name).exists():
        raise StorageError(
            f"Cluster {host.cluster.name} already has a volume group {name}.", "name"
        )
    for device in devices:
        if device.host_id != host.pk:
            raise StorageError(f"{device.path} is not a device of {host.name}.", "devices")
        if device.volume_group_name:
            raise StorageError(
                f"{device.path} already belongs to volume group {device.volume_group_name}.",
                "devices",
            )
        if device.in_use:
            raise StorageError(
                f"{device.path} is in use ({device.in_use}): it cannot become part of a "
                "volume group. Probe the host again once it is free.",
                "devices",
            )
    size = extent_size_bytes
    if size < 1024 or size & (size - 1):
        raise StorageError(
            "The extent size must be a power of two, e.g. 1, 2, 4, 8 … MiB.", "extent_size_mib"
        )
    paths = [d.path for d in devices]
    steps = [jobs.StepSpec.of(host, proto.PvcreateArgs(p), stage=0) for p in paths]
    vgcreate = proto.VgcreateArgs(name, paths, local=local, extent_size_bytes=size)
    steps.append(jobs.StepSpec.of(host, vgcreate, stage=1))
    if local:
        steps.append(jobs.StepSpec.of(host, proto.StorageProbeArgs(), stage=2))
    else:
        # A shared VG is used from every host: each joins its lockspace, then reports it.
        others = _cluster_hosts(host.cluster)
        steps += [jobs.StepSpec.of(h, proto.VgLockstartArgs(name), stage=2) for h in others]
        steps += [jobs.StepSpec.of(h, proto.StorageProbeArgs(), stage=3) for h in others]
    return _request(
        "storage-vg-create",
        steps,
        actor=actor,
        cluster=host.cluster,
        params={
            "host": host.name,
            "vg": name,
            "devices": paths,
            "local": local,
            "extent_size_bytes": extent_size_bytes,
        },
        doing=f"create {'local' if local else 'clustered'} volume "
        f"group {name} on {', '.join(paths)} ({host.name})",
        verb="vg-create",
        name=name,
    )


def create_gfs2_volume(
    host: Host,
    vg: VolumeGroup,
    *,
    name: str,
    size_bytes: int,
    actor: Any,
    fs_name: str = "",
    mount_point: str = "",
    journals: int | None = None,
) -> Job:
    """lvcreate, mkfs.gfs2 (``-j journals``, lock table ``cluster:fs``), then an fstab line
    and a mount on every host of the cluster, in one job.

    Names default to the LV's: file system ``name``, mount point ``/mnt/<name>``; journals
    default to the number of hosts (each host that mounts needs one).
    """
    cluster = vg.cluster
    if LogicalVolume.objects.filter(volume_group=vg, name=name).exists():
        raise StorageError(f"Volume group {vg.name} already has a logical volume {name}.", "name")
    if vg.free_bytes and size_bytes > vg.free_bytes:
        raise StorageError(
            f"Volume group {vg.name} has only {vg.free_bytes // MIB} MiB free.", "size_mib"
        )
    hosts = list(Host.objects.filter(cluster=cluster).order_by("name"))
    fs_name = fs_name or name
    mount_point = mount_point or f"/mnt/{name}"
    journals = journals or max(1, len(hosts))
    device = f"/dev/{vg.name}/{name}"
    # Shared: created inactive (lvcreate would take it exclusive), then active everywhere.
    lvcreate = proto.LvcreateArgs(vg.name, name, size_bytes, activate=not vg.clustered)
    steps = [jobs.StepSpec.of(host, lvcreate)]
    if vg.clustered:
        steps += [jobs.StepSpec.of(h, proto.LvActivateArgs(vg.name, name), 1) for h in hosts]
    base = 2 if vg.clustered else 1
    mkfs = proto.MkfsGfs2Args(device, cluster.name, fs_name, journals)
    steps.append(jobs.StepSpec.of(host, mkfs, stage=base))
    fstab = proto.FstabEntryArgs(device, mount_point, "gfs2")
    if vg.clustered:
        # nothing activates a shared VG's LV at boot: the agent adds a unit that does
        fstab = replace(fstab, options=GFS2_FSTAB_OPTIONS, activate_shared=True)
    steps += [jobs.StepSpec.of(h, fstab, stage=base + 1) for h in hosts]
    mount = proto.MountArgs(device, mount_point, "gfs2")
    steps += [jobs.StepSpec.of(h, mount, stage=base + 2) for h in hosts]
    short = (
        f"only {journals} journals for {len(hosts)} hosts: "
        f"{len(hosts) - journals} host(s) will not be able to mount it"
    )
    return _request(
        "storage-gfs2-create",
        steps,
        actor=actor,
        cluster=cluster,
        params={
            "host": host.name,
            "vg": vg.name,
            "lv": name,
            "fs": fs_name,
            "mount_point": mount_point,
            "journals": journals,
            "size_bytes": size_bytes,
        },
        doing=f"create {vg.name}/{name} with GFS2 {cluster.name}:"
        f"{fs_name} ({journals} journals), mount on {mount_point} on {len(hosts)} host(s)",
        verb="lv-create",
        name=f"{vg.name}/{name}",
        warning=short if journals < len(hosts) else "",
    )


def extend_volume(host: Host, lv: LogicalVolume, size_bytes: int, *, actor: Any) -> Job:
    """lvextend to the new total size, then a probe to show it."""
    if size_bytes <= lv.size_bytes:
        raise StorageError(
            f"{lv} is already {lv.size_bytes // MIB} MiB: give a larger size.", "size_mib"
        )
    vg = lv.volume_group
    if vg.free_bytes and size_bytes - lv.size_bytes > vg.free_bytes:
        raise StorageError(
            f"Volume group {vg.name} has only {vg.free_bytes // MIB} MiB free.", "size_mib"
        )
    steps = [jobs.StepSpec.of(host, proto.LvextendArgs(vg.name, lv.name, size_bytes))]
    stage = 1
    if vg.clustered:
        # Debian's lvmlockd does not refresh the LV on the other hosts: each reloads its size.
        others = [h for h in _cluster_hosts(vg.cluster) if h.pk != host.pk]
        refresh = proto.LvRefreshArgs(vg.name, lv.name)
        steps += [jobs.StepSpec.of(h, refresh, stage=1) for h in others]
        stage = 2
    fs = Filesystem.objects.filter(logical_volume=lv).first()
    if fs is not None:
        steps.append(jobs.StepSpec.of(host, proto.Gfs2GrowArgs(fs.mount_point), stage))
        stage += 1
    steps.append(jobs.StepSpec.of(host, proto.StorageProbeArgs(), stage=stage))
    return _request(
        "storage-lv-extend",
        steps,
        actor=actor,
        cluster=vg.cluster,
        params={"host": host.name, "vg": vg.name, "lv": lv.name, "size_bytes": size_bytes},
        doing=f"extend {lv} to {size_bytes // MIB} MiB",
        verb="lv-extend",
        name=str(lv),
    )


def remove_volume(host: Host, lv: LogicalVolume, *, actor: Any, unmount: bool = False) -> Job:
    """Remove a logical volume (and its GFS2). Every host first says where it has the LV
    mounted: without ``unmount`` a mount anywhere refuses the job there (the host's words),
    before anything changed. With ``unmount``: unmount and drop the fstab line everywhere,
    deactivate it everywhere (a shared VG's LV), then lvremove."""
    vg = lv.volume_group
    if reason := holds_guest_disks(lv):
        raise StorageError(f"{lv} cannot be removed: {reason}.", "lv")
    # A host that is down cannot answer; it remounts from fstab when it returns, so a removal
    # with it still listed there is refused by the hosts that are up (they see its fstab).
    hosts = [h for h in _cluster_hosts(vg.cluster) if h.state == HostState.ONLINE]
    fs = Filesystem.objects.filter(logical_volume=lv).first()
    steps: list[jobs.StepSpec] = []
    stage = 0
    if unmount and fs is not None:
        steps += [jobs.StepSpec.of(h, proto.UnmountArgs(fs.mount_point), 0) for h in hosts]
        fstab = proto.FstabEntryArgs(
            f"/dev/{vg.name}/{lv.name}",
            fs.mount_point,
            "gfs2",
            present=False,
            activate_shared=vg.clustered,
        )
        steps += [jobs.StepSpec.of(h, fstab, 1) for h in hosts]
        stage = 2
    usage = proto.LvUsageArgs(vg.name, lv.name, refuse_mounted=True)
    steps += [jobs.StepSpec.of(h, usage, stage) for h in hosts]
    if vg.clustered:
        off = proto.LvActivateArgs(vg.name, lv.name, mode="off")
        steps += [jobs.StepSpec.of(h, off, stage + 1) for h in hosts]
    steps.append(jobs.StepSpec.of(host, proto.LvremoveArgs(vg.name, lv.name), stage + 2))
    steps.append(jobs.StepSpec.of(host, proto.StorageProbeArgs(), stage + 3))
    return _request(
        "storage-lv-remove",
        steps,
        actor=actor,
        cluster=vg.cluster,
        params={"host": host.name, "vg": vg.name, "lv": lv.name, "unmount": unmount},
        doing=f"remove {lv}" + (" (unmount it everywhere first)" if unmount else ""),
        verb="lv-remove",
        name=str(lv),
    )


def holds_guest_disks(lv: LogicalVolume) -> str:
    """Why the LV must stay: the guests whose disks are on it (the LV itself, or files on its
    file system), in plain words; "" when none."""
    from console.services.models import VmService

    fs = Filesystem.objects.filter(logical_volume=lv).first()
    vg = lv.volume_group
    mapper = f"/dev/mapper/{vg.name.replace('-', '--')}-{lv.name.replace('-', '--')}"
    quoted = [rf"""['"]{re.escape(p)}['"]""" for p in (f"/dev/{vg.name}/{lv.name}", mapper)]
    if fs is not None:  # a file on the file system: an attribute starting with the mount point
        quoted.append(rf"""['"]{re.escape(fs.mount_point.rstrip("/"))}/""")
    pattern = re.compile("|".join(quoted))
    guests = sorted(
        s.name
        for s in VmService.objects.filter(cluster=vg.cluster).only("name", "domain_xml")
        if pattern.search(s.domain_xml)
    )
    if not guests:
        return ""
    return f"it holds the disks of {', '.join(guests)} (remove or move those guests first)"


def add_journals(host: Host, fs: Filesystem, count: int, *, actor: Any) -> Job:
    """gfs2_jadd on a host where the file system is mounted (a new host needs a journal)."""
    if not 1 <= count <= 16:
        raise StorageError("Add between 1 and 16 journals.", "journals")
    if host.cluster_id != fs.logical_volume.volume_group.cluster_id:
        raise StorageError(f"{host.name} is not a host of {fs.name}'s cluster.", "host")
    if host.state != HostState.ONLINE:
        raise StorageError(
            f"{host.name} is {host.state}: add journals on a host that is online and has "
            f"{fs.mount_point} mounted.",
            "host",
        )
    steps = [jobs.StepSpec.of(host, proto.Gfs2JaddArgs(fs.mount_point, count))]
    return _request(
        "storage-gfs2-jadd",
        steps,
        actor=actor,
        cluster=fs.logical_volume.volume_group.cluster,
        params={"host": host.name, "fs": fs.name, "journals": count},
        doing=f"add {count} journal(s) to {fs.name}",
        verb="gfs2-jadd",
        name=fs.name,
    )


@jobs.on_step_success("lvremove")
def forget_lv(step: JobStep, data: dict[str, Any]) -> None:
    """The LV is gone, its file system with it (the probe after it updates the VG's space)."""
    host = step.host
    if host is not None:
        LogicalVolume.objects.filter(
            volume_group__cluster=host.cluster,
            volume_group__name=step.args.get("vg"),
            name=step.args.get("lv"),
        ).delete()


@jobs.on_step_success("gfs2_jadd")
def store_journals(step: JobStep, data: dict[str, Any]) -> None:
    """Count the added journals on the file system mounted there."""
    host = step.host
    added = int(data.get("journals_added") or step.args.get("journals") or 0)
    if host is None or not added:
        return
    fs = Filesystem.objects.filter(
        logical_volume__volume_group__cluster=host.cluster,
        mount_point=step.args.get("mount_point"),
    ).first()
    if fs is not None:
        fs.journals += added
        fs.save(update_fields=["journals"])


def dlm_fence_ack(down: Host, *, actor: Any = None) -> Job | None:
    """Tell the dlm of every other online host that ``down`` is fenced (powered off), so its
    GFS2 journals are recovered at once instead of blocking the file system. None when the
    cluster has no shared storage (no clustered VG) or no host is left to tell."""
    cluster = down.cluster
    if not VolumeGroup.objects.filter(cluster=cluster, clustered=True).exists():
        return None
    survivors = [
        h for h in _cluster_hosts(cluster) if h.pk != down.pk and h.state == HostState.ONLINE
    ]
    if not survivors:
        return None
    steps = [jobs.StepSpec.of(h, proto.DlmFenceAckArgs(down.name)) for h in survivors]
    return jobs.create_job(
        "dlm-fence-ack",
        steps,
        cluster=cluster,
        created_by=actor,
        params={"host": down.name, "survivors": [h.name for h in survivors]},
        message=f"tell dlm on {', '.join(h.name for h in survivors)} that {down.name} is fenced",
    )


@jobs.on_step_success("fence")
def fenced(step: JobStep, data: dict[str, Any]) -> None:
    """A fence agent powered a host off: the survivors' dlm may recover its journals. Only the
    engine's fences count (a person's "test" of a device asks its status, nothing more), and a
    status query only when it found the host off (after a lost fence result)."""
    if step.job.kind != "fence":
        return
    if step.args.get("action") in ("status", "monitor") and data.get("power") != "off":
        return
    target = Host.objects.filter(name=step.job.params.get("host")).first()
    if target is not None and str(data.get("outcome", "ok")) in ("ok", "off"):
        transaction.on_commit(lambda: dlm_fence_ack(target))


def _cluster_hosts(cluster: Cluster) -> list[Host]:
    return list(Host.objects.filter(cluster=cluster).order_by("name"))


def _request(
    kind: str,
    steps: list[jobs.StepSpec],
    *,
    actor: Any,
    cluster: Cluster,
    params: dict[str, Any],
    doing: str,
    verb: str,
    name: str,
    warning: str = "",
) -> Job:
    """A storage request's job (``doing``: what it does, in the actor's name; ``warning``
    logged on it) and its line in the event log (``verb`` on ``name``), in one transaction."""
    with transaction.atomic():
        job = jobs.create_job(
            kind,
            steps,
            cluster=cluster,
            created_by=actor,
            params=params,
            message=f"{actor_name(actor)}: {doing}",
        )
        if warning:
            jobs.add_event(job, warning, level="warning")
        record(
            actor=actor_name(actor),
            verb=verb,
            object_type="storage",
            object_name=name,
            cluster=cluster,
            result="info",
            message=f"requested (job {job.pk})",
            data={"job": job.pk},
        )
    return job


def fence_waits(cluster: Cluster) -> list[str]:
    """What blocks the cluster's GFS2 right now, in plain words: dlm on every host stops the
    file system's I/O while a host that had it is lost and not yet fenced, and until the
    survivors' dlm has been told of the fence. [] when nothing does (or no clustered storage)."""
    names_ = list(
        Filesystem.objects.filter(
            logical_volume__volume_group__cluster=cluster,
            logical_volume__volume_group__clustered=True,
        ).values_list("name", flat=True)
    )
    if not names_:
        return []
    what = "GFS2 " + ", ".join(sorted(names_))
    out = []
    waiting = (HostState.UNREACHABLE, HostState.FENCING)
    for host in Host.objects.filter(cluster=cluster, state__in=waiting).order_by("name"):
        reason = f" ({host.state_reason})" if host.state_reason else ""
        out.append(
            f"{what} blocked waiting for fence: dlm holds I/O on every host until {host.name} "
            f"is fenced or acknowledged down — {host.get_state_display().lower()}{reason}"
        )
    unfinished = Job.objects.filter(cluster=cluster, kind="dlm-fence-ack").exclude(
        status__in=FINISHED_STATUSES
    )
    for job in unfinished.order_by("pk"):
        out.append(
            f"{what} blocked waiting for fence: {job.params.get('host')} is fenced; telling dlm "
            f"on {', '.join(job.params.get('survivors') or [])} (job {job.pk}), then GFS2 "
            "recovers its journal"
        )
    failed = Job.objects.filter(
        cluster=cluster, kind="dlm-fence-ack", status__in=(JobStatus.FAILED, JobStatus.LOST)
    )
    last = failed.order_by("-pk").first()
    if (
        last is not None
        and not Job.objects.filter(
            cluster=cluster, kind="dlm-fence-ack", pk__gt=last.pk, status=JobStatus.SUCCEEDED
        ).exists()
    ):
        out.append(
            f"{what} may be blocked: telling dlm that {last.params.get('host')} is fenced "
            f"failed (job {last.pk}: {last.explanation[:200]}); acknowledge the host down again "
            "or run `dlm_tool fence_ack` on the survivors"
        )
    return out


# --- how a storage job ended, in plain words -------------------------------------------------
def outcome(job: Job, steps: list[JobStep] | None = None) -> str:
    """One line for the storage tab and the job page: says when GFS2 could not be mounted, and
    which part of LV + GFS2 failed (the agent's own words stay in the job's explanation)."""
    steps = steps if steps is not None else list(job.steps.all())
    if job.kind == "storage-gfs2-create":
        failed = {s.kind: s for s in steps if s.status == StepStatus.FAILED}
        if "lvcreate" in failed:
            return f"creating the logical volume failed: {failed['lvcreate'].error}"
        if "mkfs_gfs2" in failed:
            return _mkfs_failure(failed["mkfs_gfs2"])
        formatted = any(s.kind == "mkfs_gfs2" and s.status == StepStatus.SUCCEEDED for s in steps)
        no_gfs2 = [
            s
            for s in steps
            if s.kind == "mount"
            and s.status == StepStatus.FAILED
            and ("lacks 'gfs2'" in s.error or "/proc/filesystems" in s.error)
        ]
        if formatted and no_gfs2:
            return NO_GFS2_KERNEL
        if job.status == JobStatus.SUCCEEDED:
            return f"formatted and mounted on {job.params.get('mount_point')} on every host"
    if job.kind == "storage-vg-create":
        vgcreate = next((s for s in steps if s.kind == "vgcreate"), None)
        if (
            vgcreate is not None
            and vgcreate.status == StepStatus.FAILED
            and vgcreate.error.startswith("clustered locking unavailable")
        ):
            return NO_LVMLOCKD.format(host=vgcreate.host.name if vgcreate.host else "the host")
    if job.status == JobStatus.FAILED:
        return job.explanation
    return job.get_status_display().lower()


def _mkfs_failure(step: JobStep) -> str:
    """mkfs.gfs2 runs after lvcreate succeeded; a missing device node means the LV is inactive
    (no device-mapper, or LVM's activation switched off), which the agent reports as
    "mkfs.gfs2 exited 1: /dev/VG/LV: No such file or directory"."""
    device = str(step.args.get("device") or "")
    if device and f"{device}: No such file or directory" in step.error:
        return NO_DEVICE_NODE.format(device=device)
    return f"logical volume created; formatting failed: {step.error}"


def step_summary(steps: list[JobStep]) -> list[tuple[str, str, int]]:
    """(kind, status, how many) for runs of equal steps in order, e.g. the three skipped mounts
    of a job as one entry: what ran, what failed and what was left out, at a glance."""
    summary: list[tuple[str, str, int]] = []
    for step in sorted(steps, key=lambda s: (s.stage, s.seq)):
        if summary and summary[-1][:2] == (step.kind, step.status):
            summary[-1] = (step.kind, step.status, summary[-1][2] + 1)
        else:
            summary.append((step.kind, step.status, 1))
    return summary


# --- what the agents report ------------------------------------------------------------------
def _flatten(devices: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for device in devices:
        yield device
        yield from _flatten(device.get("children") or [])


def in_use(raw: dict[str, Any]) -> str:
    """Why lsblk's device must not be given to pvcreate, in plain words ("" = free)."""
    mounted = [str(d["mountpoint"]) for d in _flatten([raw]) if d.get("mountpoint")]
    if mounted:
        return f"mounted at {', '.join(sorted(mounted))}"
    if raw.get("children"):
        return "has partitions or holders"
    if raw.get("fstype") and raw.get("fstype") != "LVM2_member":
        return f"holds a {raw['fstype']} file system"
    if not int(raw.get("size") or 0):
        return "empty (0 bytes)"
    return ""


@jobs.on_step_success("storage_probe")
def store_probe(step: JobStep, data: dict[str, Any]) -> None:
    """Replace the host's block devices; refresh its cluster's VGs and LVs from the report."""
    host = step.host
    if host is None:
        return
    now = timezone.now()
    vg_of = {str(pv.get("pv_name")): str(pv.get("vg_name") or "") for pv in data.get("pvs", [])}
    kinds = {k.value for k in BlockDevice.Kind}
    seen: dict[str, BlockDevice] = {}
    for raw in _flatten(data.get("blockdevices") or []):
        path = str(raw.get("path") or f"/dev/{raw.get('name', '')}")
        kind = str(raw.get("type") or "")
        if kind in ("lvm", "rom", "crypt") or not path.startswith("/dev/"):
            continue
        device, _ = BlockDevice.objects.update_or_create(
            host=host,
            path=path,
            defaults={
                "kind": kind if kind in kinds else BlockDevice.Kind.OTHER,
                "size_bytes": int(raw.get("size") or 0),
                "model": str(raw.get("model") or "")[:128],
                "serial": str(raw.get("serial") or "")[:128],
                "volume_group_name": vg_of.get(path, ""),
                "in_use": in_use(raw)[:255],
                "probed": now,
            },
        )
        seen[path] = device
    BlockDevice.objects.filter(host=host).exclude(path__in=list(seen)).delete()
    for raw_vg in data.get("vgs", []):
        name = str(raw_vg.get("vg_name") or "")
        if not name:
            continue
        locked = str(raw_vg.get("vg_lock_type") or "") in LOCKED_VG_TYPES
        vg, _ = VolumeGroup.objects.get_or_create(
            cluster=host.cluster, name=name, defaults={"clustered": locked}
        )
        vg.size_bytes = int(raw_vg.get("vg_size") or 0)
        vg.free_bytes = int(raw_vg.get("vg_free") or 0)
        vg.save(update_fields=["size_bytes", "free_bytes"])
        vg.physical_volumes.add(*[d for p, d in seen.items() if vg_of.get(p) == name])
    # where the cluster's file systems are mounted on this host, as lsblk saw it
    mounted = {
        str(d["mountpoint"])
        for d in _flatten(data.get("blockdevices") or [])
        if d.get("mountpoint") and d.get("type") == "lvm"
    }
    for fs in Filesystem.objects.filter(logical_volume__volume_group__cluster=host.cluster):
        _set_mounted(host, fs.mount_point, fs.mount_point in mounted)
    vgs = {vg.name: vg for vg in VolumeGroup.objects.filter(cluster=host.cluster)}
    for raw_lv in data.get("lvs", []):
        owner = vgs.get(str(raw_lv.get("vg_name") or ""))
        if owner is None or not raw_lv.get("lv_name"):
            continue
        LogicalVolume.objects.update_or_create(
            volume_group=owner,
            name=str(raw_lv["lv_name"]),
            defaults={"size_bytes": max(1, int(raw_lv.get("lv_size") or 1))},
        )


def _set_mounted(host: Host, mount_point: str, mounted: bool) -> None:
    for fs in Filesystem.objects.filter(
        logical_volume__volume_group__cluster=host.cluster, mount_point=mount_point
    ):
        hosts = set(fs.mounted_on) - {host.name} | ({host.name} if mounted else set())
        if sorted(hosts) != fs.mounted_on:
            fs.mounted_on = sorted(hosts)
            fs.save(update_fields=["mounted_on"])


@jobs.on_step_success("mount")
def store_mounted(step: JobStep, data: dict[str, Any]) -> None:
    if step.host is not None:
        _set_mounted(step.host, str(data.get("mount_point") or step.args.get("mount_point")), True)


@jobs.on_step_success("unmount")
def store_unmounted(step: JobStep, data: dict[str, Any]) -> None:
    if step.host is not None:
        _set_mounted(step.host, str(data.get("mount_point") or step.args.get("mount_point")), False)


@jobs.on_step_success("vgcreate")
def store_vg(step: JobStep, data: dict[str, Any]) -> None:
    host = step.host
    if host is None:
        return
    name = str(data.get("vg") or step.args.get("vg"))
    vg, _ = VolumeGroup.objects.update_or_create(
        cluster=host.cluster,
        name=name,
        defaults={
            "clustered": bool(data.get("shared", not step.args.get("local"))),
            "extent_size_bytes": int(step.job.params.get("extent_size_bytes") or DEFAULT_EXTENT),
        },
    )
    devices = BlockDevice.objects.filter(host=host, path__in=step.args.get("devices", []))
    devices.update(volume_group_name=name)
    vg.physical_volumes.add(*devices)


@jobs.on_step_success("lvcreate")
def store_lv(step: JobStep, data: dict[str, Any]) -> None:
    host = step.host
    if host is None:
        return
    vg = VolumeGroup.objects.filter(cluster=host.cluster, name=step.args.get("vg")).first()
    if vg is None:
        return
    size = int(data.get("size_bytes") or step.args.get("size_bytes") or 1)
    LogicalVolume.objects.update_or_create(
        volume_group=vg, name=str(step.args.get("lv")), defaults={"size_bytes": size}
    )
    if vg.free_bytes:
        vg.free_bytes = max(0, vg.free_bytes - size)
        vg.save(update_fields=["free_bytes"])


@jobs.on_step_success("lvextend")
def store_lv_size(step: JobStep, data: dict[str, Any]) -> None:
    host = step.host
    if host is None:
        return
    size = int(data.get("size_bytes") or step.args.get("size_bytes") or 1)
    LogicalVolume.objects.filter(
        volume_group__cluster=host.cluster,
        volume_group__name=step.args.get("vg"),
        name=step.args.get("lv"),
    ).update(size_bytes=size)


@jobs.on_step_success("mkfs_gfs2")
def store_fs(step: JobStep, data: dict[str, Any]) -> None:
    host = step.host
    params = step.job.params
    if host is None:
        return
    lv = LogicalVolume.objects.filter(
        volume_group__cluster=host.cluster,
        volume_group__name=params.get("vg"),
        name=params.get("lv"),
    ).first()
    if lv is None:
        return
    Filesystem.objects.update_or_create(
        logical_volume=lv,
        defaults={
            "name": str(step.args.get("fs")),
            "journals": int(data.get("journals") or step.args.get("journals") or 1),
            "mount_point": str(params.get("mount_point") or f"/mnt/{lv.name}"),
            "in_fstab": True,
        },
    )
