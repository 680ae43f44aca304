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
from console.core.generic import FormPageView, RoleView
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


class OnHost(RoleView):
    """A form of the storage tab: ``self.host`` (with its cluster), back to the tab after."""

    def load(self) -> None:
        self.host = _host(self.kwargs["pk"], self.kwargs["host_pk"])
        super().load()

    def base_context(self) -> dict[str, Any]:
        return {**super().base_context(), "cluster": self.host.cluster}

    def success_url(self) -> str:
        return reverse("storage:host", args=[self.kwargs["pk"], self.host.pk])


class TabForm(OnHost, FormPageView):
    """A form of the tab itself (create a VG, create an LV with GFS2): shown again in the tab
    with its errors (400)."""

    invalid_status = 400
    form_name: str

    def form_kwargs(self) -> dict[str, Any]:
        return {"host": self.host}

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return self.render_form(self.get_form(), 400)

    def render_form(self, form: Any, status: int = 200, **extra: Any) -> HttpResponse:
        return self.show(
            "storage/host_storage.html", _context(self.host, **{self.form_name: form}), status
        )


class VgCreate(TabForm):
    form_class = VolumeGroupForm
    form_name = "vg_form"

    def perform(self, form: Any) -> str:
        data, actor = form.cleaned_data, self.request.user
        devices, extent = list(data["devices"]), data["extent_size_mib"] * MIB
        job = services.create_volume_group(
            self.host,
            data["name"],
            devices,
            actor=actor,
            local=data["local"],
            extent_size_bytes=extent,
        )
        return f"Creating volume group {data['name']} (job {job.pk})."


class LvCreate(TabForm):
    form_class = Gfs2VolumeForm
    form_name = "lv_form"

    def perform(self, form: Any) -> str:
        data = form.cleaned_data
        named = {k: data[k] for k in ("name", "fs_name", "mount_point", "journals")}
        size = data["size_mib"] * MIB
        job = services.create_gfs2_volume(
            self.host, data["volume_group"], size_bytes=size, actor=self.request.user, **named
        )
        if form.journal_warning:
            messages.warning(self.request, form.journal_warning)
        return f"Creating {data['name']} with a GFS2 file system (job {job.pk})."


class OnVolume(OnHost, FormPageView):
    """A form about one logical volume of the cluster (``self.lv``), on a page of its own;
    a posted form shown again answers 400."""

    invalid_status = 400

    def load(self) -> None:
        super().load()
        self.lv = get_object_or_404(
            LogicalVolume.objects.select_related("volume_group__cluster"),
            pk=self.kwargs["lv_pk"],
            volume_group__cluster_id=self.kwargs["pk"],
        )


class LvJournals(OnVolume):
    form_class = JournalsForm

    def load(self) -> None:
        super().load()
        self.fs = get_object_or_404(Filesystem, logical_volume=self.lv)

    def perform(self, form: Any) -> str:
        count = form.cleaned_data["journals"]
        job = services.add_journals(self.host, self.fs, count, actor=self.request.user)
        return f"Adding {count} journal(s) to {self.fs.name} (job {job.pk})."

    def context(self, form: Any) -> dict[str, Any]:
        fs, host = self.fs, self.host
        return {
            "title": f"Add journals to {fs.name}",
            "intro": f"{fs.name} ({self.lv}) has {fs.journals} journal(s) and is mounted at "
            f"{fs.mount_point}; the cluster has {host.cluster.hosts.count()} host(s). "
            f"gfs2_jadd runs on {host.name}.",
            "submit": "Add journals",
            "cancel": self.success_url(),
        }


class LvRemove(OnVolume):
    form_class = RemoveForm

    def load(self) -> None:
        super().load()
        self.fs = Filesystem.objects.filter(logical_volume=self.lv).first()
        self.refusal = services.holds_guest_disks(self.lv)

    def perform(self, form: Any) -> str:
        job = services.remove_volume(
            self.host, self.lv, actor=self.request.user, unmount=form.cleaned_data["unmount"]
        )
        return f"Removing {self.lv} (job {job.pk})."

    def error_field(self, form: Any, exc: Any) -> str | None:
        return None

    def context(self, form: Any) -> dict[str, Any]:
        lv, fs = self.lv, self.fs
        intro = f"{lv} ({lv.size_bytes // MIB} MiB)"
        if fs is not None:
            intro += f" holds the GFS2 {fs.name}, in the fstab of every host at {fs.mount_point}"
        intro += ". Removing it destroys its data."
        if self.refusal:
            intro += f" Refused now: {self.refusal}."
        return {
            "title": f"Remove {lv}",
            "intro": intro,
            "submit": "Remove",
            "cancel": self.success_url(),
        }


class LvExtend(OnVolume):
    form_class = ExtendForm

    def form_kwargs(self) -> dict[str, Any]:
        return {"initial": {"size_mib": self.lv.size_bytes // MIB}}

    def perform(self, form: Any) -> str:
        size = form.cleaned_data["size_mib"] * MIB
        job = services.extend_volume(self.host, self.lv, size, actor=self.request.user)
        return f"Extending {self.lv} (job {job.pk})."

    def error_field(self, form: Any, exc: Any) -> str | None:
        return "size_mib"

    def context(self, form: Any) -> dict[str, Any]:
        lv = self.lv
        return {
            "title": f"Extend {lv}",
            "intro": f"Now {lv.size_bytes // MIB} MiB; volume group {lv.volume_group.name} has "
            f"{lv.volume_group.free_bytes // MIB} MiB free.",
            "submit": "Extend",
        }
