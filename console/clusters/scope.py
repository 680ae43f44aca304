"""Views under ``/clusters/<pk>/``: their cluster, and only that cluster's objects."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from django.urls import reverse

from console.clusters.models import Cluster, Host
from console.core.generic import RoleView


class InCluster(RoleView):
    """``self.cluster`` (404 when there is none), read before the object; the objects looked up
    are the cluster's, a form is given it; every template gets ``cluster`` (and ``tab``)."""

    tab = ""

    def load(self) -> None:
        self.cluster = get_object_or_404(Cluster, pk=self.kwargs["pk"])
        super().load()

    def get_queryset(self) -> Any:
        return super().get_queryset().filter(cluster=self.cluster)  # type: ignore[misc]

    def form_kwargs(self) -> dict[str, Any]:
        """A form of the cluster's objects is given the cluster (its choices are the cluster's)."""
        return {**super().form_kwargs(), "cluster": self.cluster}  # type: ignore[misc]

    def base_context(self) -> dict[str, Any]:
        tab = {"tab": self.tab} if self.tab else {}
        return {**super().base_context(), "cluster": self.cluster, **tab}


class OnHost(RoleView):
    """A view about one host of ``/clusters/<pk>/hosts/<host_pk>/``: ``self.host`` (with its
    cluster, 404 when the host is not in that cluster); ``back`` names the page to go back to
    (the host's page, or the cluster's with ``clusters:detail``)."""

    back = "clusters:host"

    def load(self) -> None:
        self.host = get_object_or_404(
            Host.objects.select_related("cluster"),
            pk=self.kwargs["host_pk"],
            cluster_id=self.kwargs["pk"],
        )
        self.cluster = self.host.cluster
        super().load()

    def back_url(self) -> str:
        if self.back == "clusters:detail":
            return reverse(self.back, args=[self.kwargs["pk"]])
        return reverse(self.back, args=[self.kwargs["pk"], self.host.pk])
