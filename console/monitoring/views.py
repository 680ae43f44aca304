"""Alert hooks in the console: list, edit, delete, and the Test button."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse

from console.core.generic import ObjectDeleteView, ObjectEditView, ObjectListView
from console.core.services import actor_name
from console.core.views import role_required
from console.monitoring import services
from console.monitoring.forms import AlertHookForm
from console.monitoring.models import AlertHook


class HookList(ObjectListView):
    template_name = "monitoring/hook_list.html"
    context_object_name = "hooks"

    def get_queryset(self) -> Any:
        return AlertHook.objects.all()


class HookEdit(ObjectEditView):
    model = AlertHook
    form_class = AlertHookForm
    what = "alert hook"

    def success_url(self) -> str:
        return reverse("monitoring:hooks")


class HookDelete(ObjectDeleteView):
    model = AlertHook
    what = "alert hook"

    def success_url(self) -> str:
        return reverse("monitoring:hooks")


@role_required(write="admin")
def hook_test(request: HttpRequest, pk: int) -> HttpResponse:
    hook = get_object_or_404(AlertHook, pk=pk)
    if request.method == "POST":
        result = services.test_hook(hook, actor=actor_name(request.user))
        level = messages.error if result.startswith("failed") else messages.success
        level(request, f"Test alert to {hook.name}: {result}")
    return redirect("monitoring:hooks")
