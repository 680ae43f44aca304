from django.contrib import admin

from console.core.admin import ReadOnlyAdmin
from console.events.models import Event


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ["time", "actor", "verb", "object_type", "object_name", "result"]
    list_filter = ["result", "verb", "object_type"]
