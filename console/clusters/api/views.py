from console.clusters.api import serializers
from console.clusters.models import Cluster, FenceDevice, Host
from console.core.api import HavenViewSet


class ClusterViewSet(HavenViewSet):
    queryset = Cluster.objects.all()
    serializer_class = serializers.ClusterSerializer
    filterset_fields = ("name",)


class HostViewSet(HavenViewSet):
    queryset = Host.objects.select_related("cluster")
    serializer_class = serializers.HostSerializer
    filterset_fields = ("cluster", "cluster__name", "name", "state")


class FenceDeviceViewSet(HavenViewSet):
    queryset = FenceDevice.objects.select_related("cluster", "host")
    serializer_class = serializers.FenceDeviceSerializer
    filterset_fields = ("cluster", "host", "agent")
