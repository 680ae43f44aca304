from django.contrib import admin

from console.monitoring.models import AlertHook


@admin.register(AlertHook)
class AlertHookAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "kind", "cluster", "enabled", "last_sent_at", "last_result"]
