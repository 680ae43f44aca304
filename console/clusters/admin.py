from django.contrib import admin

from console.clusters.models import Cluster, FenceDevice, Host


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "description", "created"]


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "cluster", "address", "state", "last_heartbeat"]
    list_filter = ["cluster", "state"]


@admin.register(FenceDevice)
class FenceDeviceAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "agent", "host", "plug"]
    exclude = ["secret_parameters_encrypted"]
