"""URL map: the web console, the REST API under /api/, Django admin under /admin/."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from console.clusters.api.views import ClusterViewSet, FenceDeviceViewSet, HostViewSet
from console.core import views as core_views
from console.events.api.views import EventViewSet
from console.jobs.api.views import JobEventViewSet, JobViewSet
from console.services.api.views import FailoverDomainViewSet, VmServiceViewSet
from console.storage.api.views import (
    BlockDeviceViewSet,
    FilesystemViewSet,
    LogicalVolumeViewSet,
    VolumeGroupViewSet,
)

router = DefaultRouter()
router.register("clusters", ClusterViewSet)
router.register("hosts", HostViewSet)
router.register("fence-devices", FenceDeviceViewSet)
router.register("block-devices", BlockDeviceViewSet)
router.register("volume-groups", VolumeGroupViewSet)
router.register("logical-volumes", LogicalVolumeViewSet)
router.register("filesystems", FilesystemViewSet)
router.register("failover-domains", FailoverDomainViewSet)
router.register("services", VmServiceViewSet)
router.register("jobs", JobViewSet)
router.register("job-events", JobEventViewSet)
router.register("events", EventViewSet)

urlpatterns = [
    path("", core_views.home, name="home"),
    path("healthz", core_views.healthz, name="healthz"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/", include(router.urls)),
]
