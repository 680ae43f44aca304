from django.contrib import admin

from console.events.models import Event


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["time", "actor", "verb", "object_type", "object_name", "result"]
    list_filter = ["result", "verb", "object_type"]
