from django.contrib import admin

from console.clusters.models import Cluster, FenceDevice, Host
from console.core.admin import ReadOnlyAdmin


@admin.register(Cluster)
class ClusterAdmin(ReadOnlyAdmin):
    list_display = ["name", "description", "created"]


@admin.register(Host)
class HostAdmin(ReadOnlyAdmin):
    list_display = ["name", "cluster", "address", "state", "last_heartbeat"]
    list_filter = ["cluster", "state"]


@admin.register(FenceDevice)
class FenceDeviceAdmin(ReadOnlyAdmin):
    list_display = ["name", "agent", "host", "plug"]
    exclude = ["secret_parameters_encrypted"]
