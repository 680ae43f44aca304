"""The Django admin: Haven's own objects read-only (every change goes through the console's
services, which check its rules and write the event log); users and groups editable, with
every change recorded in the event log like any other write."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from console.core.auth import AdminLoginForm
from console.core.models import ApiToken, LoginFailure
from console.events.services import record


class _ReadOnly:
    """Shows, never changes: change a Haven object in the console or through the API."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyAdmin(_ReadOnly, admin.ModelAdmin):  # type: ignore[type-arg]
    """Shows, never changes: change a Haven object in the console or through the API."""


class ReadOnlyInline(_ReadOnly, admin.TabularInline):  # type: ignore[type-arg]
    extra = 0


class AuditedAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Every add, change and delete made in the admin is also an event of the event log."""

    def _record(self, request: HttpRequest, verb: str, obj: Model, message: Any) -> None:
        record(
            actor=request.user.get_username(),
            verb=verb,
            obj=obj,
            message=f"in the admin site: {message}" if message else "in the admin site",
        )

    def log_addition(self, request: HttpRequest, obj: Model, message: Any) -> Any:
        self._record(request, "create", obj, "")
        return super().log_addition(request, obj, message)

    def log_change(self, request: HttpRequest, obj: Model, message: Any) -> Any:
        changed = (
            sorted({f for part in message or [] for f in part.get("changed", {}).get("fields", [])})
            if isinstance(message, list)
            else []
        )
        self._record(request, "update", obj, ", ".join(changed))
        return super().log_change(request, obj, message)

    def log_deletions(self, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
        for obj in queryset:
            self._record(request, "delete", obj, "")
        return super().log_deletions(request, queryset)


class AuditedUserAdmin(AuditedAdmin, UserAdmin):  # type: ignore[type-arg]
    pass


class AuditedGroupAdmin(AuditedAdmin, GroupAdmin):
    pass


admin.site.login_form = AdminLoginForm
admin.site.unregister(User)
admin.site.unregister(Group)
admin.site.register(User, AuditedUserAdmin)
admin.site.register(Group, AuditedGroupAdmin)


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ["prefix", "user", "created"]
    fields = ["prefix", "user", "created"]


@admin.register(LoginFailure)
class LoginFailureAdmin(ReadOnlyAdmin):
    list_display = ["time", "username", "address"]
