"""Alert hooks in the console: list, edit, delete, and the Test button."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from console.core import services as core_services
from console.core.services import actor_name
from console.core.views import role_required
from console.events.services import record
from console.monitoring import services
from console.monitoring.forms import AlertHookForm
from console.monitoring.models import AlertHook


@role_required()
def hook_list(request: HttpRequest) -> HttpResponse:
    return render(request, "monitoring/hook_list.html", {"hooks": AlertHook.objects.all()})


@role_required(read="admin")
def hook_edit(request: HttpRequest, pk: int | None = None) -> HttpResponse:
    hook = get_object_or_404(AlertHook, pk=pk) if pk else None
    form = AlertHookForm(request.POST if request.method == "POST" else None, instance=hook)
    if form.is_bound and form.is_valid():
        saved = form.save()
        record(
            actor=actor_name(request.user),
            verb="update" if hook else "create",
            obj=saved,
            cluster=saved.cluster,
        )
        messages.success(request, f"Alert hook {saved.name} saved.")
        return redirect("monitoring:hooks")
    title = f"Edit alert hook {hook.name}" if hook else "New alert hook"
    return render(request, "generic/form_page.html", {"form": form, "title": title})


@role_required(read="admin")
def hook_delete(request: HttpRequest, pk: int) -> HttpResponse:
    hook = get_object_or_404(AlertHook, pk=pk)
    if request.method == "POST":
        core_services.delete_object(hook, actor=request.user)
        messages.success(request, f"Alert hook {hook.name} deleted.")
        return redirect("monitoring:hooks")
    return render(request, "generic/confirm_delete.html", {"object": hook, "cancel": "/alerts/"})


@role_required(write="admin")
def hook_test(request: HttpRequest, pk: int) -> HttpResponse:
    hook = get_object_or_404(AlertHook, pk=pk)
    if request.method == "POST":
        result = services.test_hook(hook, actor=actor_name(request.user))
        level = messages.error if result.startswith("failed") else messages.success
        level(request, f"Test alert to {hook.name}: {result}")
    return redirect("monitoring:hooks")
