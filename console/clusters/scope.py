"""Views under ``/clusters/<pk>/``: their cluster, and only that cluster's objects."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404

from console.clusters.models import Cluster
from console.core.generic import RoleView


class InCluster(RoleView):
    """``self.cluster`` (404 when there is none), read before the object; the objects looked up
    are the cluster's; every template gets ``cluster`` (and ``tab`` when set)."""

    tab = ""

    def load(self) -> None:
        self.cluster = get_object_or_404(Cluster, pk=self.kwargs["pk"])
        super().load()

    def get_queryset(self) -> Any:
        return super().get_queryset().filter(cluster=self.cluster)  # type: ignore[misc]

    def base_context(self) -> dict[str, Any]:
        tab = {"tab": self.tab} if self.tab else {}
        return {**super().base_context(), "cluster": self.cluster, **tab}
