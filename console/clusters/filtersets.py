"""The clusters', hosts' and fence devices' lists: their query parameters (page and API)."""

from __future__ import annotations

from console.clusters.models import Cluster, FenceDevice, Host
from console.core.filtersets import FilterSet


class ClusterFilterSet(FilterSet):
    model = Cluster
    fields = ("name",)


class HostFilterSet(FilterSet):
    model = Host
    fields = ("cluster", "cluster__name", "name", "state", "maintenance")


class FenceDeviceFilterSet(FilterSet):
    model = FenceDevice
    fields = ("cluster", "host", "agent")
