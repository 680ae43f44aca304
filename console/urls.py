"""URL map: the web console (per-app urls.py), the REST API under /api/, Django admin under
/admin/, login/logout and the /healthz probe."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from console.clusters import home
from console.clusters.api.views import ClusterViewSet, FenceDeviceViewSet, HostViewSet
from console.core import views as core_views
from console.core.api import TokenView
from console.core.auth import LoginForm
from console.events.api.views import EventViewSet
from console.jobs.api.views import JobEventViewSet, JobViewSet
from console.monitoring.api.views import AlertHookViewSet
from console.monitoring.metrics import metrics_view
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
router.register("alert-hooks", AlertHookViewSet)

urlpatterns = [
    path("", home.home, name="home"),
    path("clusters/", include("console.clusters.urls")),
    path("clusters/", include("console.services.urls")),
    path("clusters/", include("console.storage.urls")),
    path("jobs/", include("console.jobs.urls")),
    path("events/", include("console.events.urls")),
    path("alerts/", include("console.monitoring.urls")),
    path("healthz", core_views.healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("login/", auth_views.LoginView.as_view(authentication_form=LoginForm), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/token/", TokenView.as_view(), name="api-token"),
    path("api/", include(router.urls)),
]

handler400 = "console.core.views.bad_request"
handler403 = "console.core.views.permission_denied"
handler404 = "console.core.views.page_not_found"
handler500 = "console.core.views.server_error"
