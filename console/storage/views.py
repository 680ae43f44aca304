"""The storage tab of a host (Conga's): disks and partitions, volume groups, logical volumes
and GFS2 file systems, with probe, create-VG, create-LV+GFS2 and extend — each a job."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from console.clusters.models import Host
from console.core.views import role_required
from console.jobs.models import FINISHED_STATUSES, Job
from console.storage import services
from console.storage.forms import (
    ExtendForm,
    Gfs2VolumeForm,
    JournalsForm,
    RemoveForm,
    VolumeGroupForm,
)
from console.storage.models import MIB, BlockDevice, Filesystem, LogicalVolume, VolumeGroup

STORAGE_JOBS = (
    "storage-probe",
    "storage-vg-create",
    "storage-gfs2-create",
    "storage-lv-extend",
    "storage-gfs2-jadd",
    "storage-lv-remove",
)


def _host(pk: int, host_pk: int) -> Host:
    return get_object_or_404(Host.objects.select_related("cluster"), pk=host_pk, cluster_id=pk)


def _context(host: Host, **forms: Any) -> dict[str, Any]:
    vgs = VolumeGroup.objects.filter(cluster_id=host.cluster_id).prefetch_related(
        Prefetch("physical_volumes", queryset=BlockDevice.objects.select_related("host")),
        Prefetch("logical_volumes", queryset=LogicalVolume.objects.select_related("filesystem")),
    )
    recent = list(
        Job.objects.filter(
            cluster_id=host.cluster_id, kind__in=STORAGE_JOBS, params__host=host.name
        ).prefetch_related("steps")[:6]
    )
    probe_job = next((j for j in recent if j.kind == "storage-probe"), None)
    return {
        "cluster": host.cluster,
        "host": host,
        "devices": BlockDevice.objects.filter(host=host).order_by("path"),
        "vgs": vgs,
        "jobs": [_job_row(j) for j in recent],
        "probing": probe_job is not None and probe_job.status not in FINISHED_STATUSES,
        "running": any(j.status not in FINISHED_STATUSES for j in recent),
        "probe_job": probe_job,
        "fence_waits": services.fence_waits(host.cluster),
        "vg_form": forms.get("vg_form") or VolumeGroupForm(host=host),
        "lv_form": forms.get("lv_form") or Gfs2VolumeForm(host=host),
        "tab": "storage",
    }


def _job_row(job: Job) -> tuple[Job, str, list[tuple[str, str, int]]]:
    """A recent job with its outcome in plain words and, when it has several, its steps."""
    steps = list(job.steps.all())
    return job, services.outcome(job, steps), services.step_summary(steps) if len(steps) > 1 else []


@role_required(read="read")
def storage(request: HttpRequest, pk: int, host_pk: int) -> HttpResponse:
    host = _host(pk, host_pk)
    return render(request, "storage/host_storage.html", _context(host))


@role_required(read="read")
def storage_live(request: HttpRequest, pk: int, host_pk: int) -> HttpResponse:
    """The devices, VGs, LVs and recent jobs; polled while a storage job runs.

    The poll that finds nothing running any more is the last one: it tells the page
    (``storage-changed``) to refresh the forms, whose device and VG choices just changed.
    """
    host = _host(pk, host_pk)
    context = _context(host)
    response = render(request, "storage/_storage_live.html", context)
    if not context["running"]:
        response["HX-Trigger"] = "storage-changed"
    return response


@role_required(read="admin")
def storage_forms(request: HttpRequest, pk: int, host_pk: int) -> HttpResponse:
    return render(request, "storage/_storage_forms.html", _context(_host(pk, host_pk)))


@role_required(read="admin")
def probe(request: HttpRequest, pk: int, host_pk: int) -> HttpResponse:
    host = _host(pk, host_pk)
    if request.method == "POST":
        services.probe(host, actor=request.user)
    if request.htmx:  # type: ignore[attr-defined]
        return render(request, "storage/_storage_live.html", _context(host))
    return redirect("storage:host", pk, host_pk)


@role_required(read="admin")
def vg_create(request: HttpRequest, pk: int, host_pk: int) -> HttpResponse:
    host = _host(pk, host_pk)
    form = VolumeGroupForm(request.POST or None, host=host)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            job = services.create_volume_group(
                host,
                data["name"],
                list(data["devices"]),
                actor=request.user,
                local=data["local"],
                extent_size_bytes=data["extent_size_mib"] * MIB,
            )
        except services.StorageError as exc:
            form.add_error(exc.field, exc.message)
        else:
            messages.success(request, f"Creating volume group {data['name']} (job {job.pk}).")
            return redirect("storage:host", pk, host_pk)
    return render(request, "storage/host_storage.html", _context(host, vg_form=form), status=400)


@role_required(read="admin")
def lv_create(request: HttpRequest, pk: int, host_pk: int) -> HttpResponse:
    host = _host(pk, host_pk)
    form = Gfs2VolumeForm(request.POST or None, host=host)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            job = services.create_gfs2_volume(
                host,
                data["volume_group"],
                name=data["name"],
                size_bytes=data["size_mib"] * MIB,
                actor=request.user,
                fs_name=data["fs_name"],
                mount_point=data["mount_point"],
                journals=data["journals"],
            )
        except services.StorageError as exc:
            form.add_error(exc.field, exc.message)
        else:
            if form.journal_warning:
                messages.warning(request, form.journal_warning)
            messages.success(
                request, f"Creating {data['name']} with a GFS2 file system (job {job.pk})."
            )
            return redirect("storage:host", pk, host_pk)
    return render(request, "storage/host_storage.html", _context(host, lv_form=form), status=400)


def _lv(pk: int, lv_pk: int) -> LogicalVolume:
    return get_object_or_404(
        LogicalVolume.objects.select_related("volume_group__cluster"),
        pk=lv_pk,
        volume_group__cluster_id=pk,
    )


@role_required(read="admin")
def lv_journals(request: HttpRequest, pk: int, host_pk: int, lv_pk: int) -> HttpResponse:
    host, lv = _host(pk, host_pk), _lv(pk, lv_pk)
    fs = get_object_or_404(Filesystem, logical_volume=lv)
    form = JournalsForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        count = form.cleaned_data["journals"]
        try:
            job = services.add_journals(host, fs, count, actor=request.user)
        except services.StorageError as exc:
            form.add_error("journals" if exc.field == "journals" else None, exc.message)
        else:
            messages.success(request, f"Adding {count} journal(s) to {fs.name} (job {job.pk}).")
            return redirect("storage:host", pk, host_pk)
    return render(
        request,
        "generic/form_page.html",
        {
            "cluster": host.cluster,
            "form": form,
            "title": f"Add journals to {fs.name}",
            "intro": f"{fs.name} ({lv}) has {fs.journals} journal(s) and is mounted at "
            f"{fs.mount_point}; the cluster has {host.cluster.hosts.count()} host(s). "
            f"gfs2_jadd runs on {host.name}.",
            "submit": "Add journals",
            "cancel": reverse("storage:host", args=[pk, host_pk]),
        },
        status=400 if form.is_bound else 200,
    )


@role_required(read="admin")
def lv_remove(request: HttpRequest, pk: int, host_pk: int, lv_pk: int) -> HttpResponse:
    host, lv = _host(pk, host_pk), _lv(pk, lv_pk)
    fs = Filesystem.objects.filter(logical_volume=lv).first()
    form = RemoveForm(request.POST if request.method == "POST" else None)
    refusal = services.holds_guest_disks(lv)
    if request.method == "POST" and form.is_valid():
        try:
            job = services.remove_volume(
                host, lv, actor=request.user, unmount=form.cleaned_data["unmount"]
            )
        except services.StorageError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, f"Removing {lv} (job {job.pk}).")
            return redirect("storage:host", pk, host_pk)
    intro = f"{lv} ({lv.size_bytes // MIB} MiB)"
    if fs is not None:
        intro += f" holds the GFS2 {fs.name}, in the fstab of every host at {fs.mount_point}"
    intro += ". Removing it destroys its data."
    if refusal:
        intro += f" Refused now: {refusal}."
    return render(
        request,
        "generic/form_page.html",
        {
            "cluster": host.cluster,
            "form": form,
            "title": f"Remove {lv}",
            "intro": intro,
            "submit": "Remove",
            "cancel": reverse("storage:host", args=[pk, host_pk]),
        },
        status=400 if form.is_bound else 200,
    )


@role_required(read="admin")
def lv_extend(request: HttpRequest, pk: int, host_pk: int, lv_pk: int) -> HttpResponse:
    host = _host(pk, host_pk)
    lv = get_object_or_404(
        LogicalVolume.objects.select_related("volume_group"),
        pk=lv_pk,
        volume_group__cluster_id=pk,
    )
    form = ExtendForm(request.POST or None, initial={"size_mib": lv.size_bytes // MIB})
    if request.method == "POST" and form.is_valid():
        try:
            job = services.extend_volume(
                host, lv, form.cleaned_data["size_mib"] * MIB, actor=request.user
            )
        except services.StorageError as exc:
            form.add_error("size_mib", exc.message)
        else:
            messages.success(request, f"Extending {lv} (job {job.pk}).")
            return redirect("storage:host", pk, host_pk)
    return render(
        request,
        "generic/form_page.html",
        {
            "cluster": host.cluster,
            "form": form,
            "title": f"Extend {lv}",
            "intro": f"Now {lv.size_bytes // MIB} MiB; volume group {lv.volume_group.name} has "
            f"{lv.volume_group.free_bytes // MIB} MiB free.",
            "submit": "Extend",
        },
        status=400 if form.is_bound else 200,
    )
