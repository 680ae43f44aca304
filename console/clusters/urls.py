from django.urls import path

from console.clusters import hostpage, stream, views
from console.core.generic import edit_urls

app_name = "clusters"
HOST = "<int:pk>/hosts/<int:host_pk>/"
urlpatterns = [
    path("new/", views.create, name="create"),
    path("<int:pk>/", views.detail, name="detail"),
    path("<int:pk>/live/", views.live, name="live"),
    path("<int:pk>/policy/", views.PolicyEdit.as_view(), name="policy"),
    path("<int:pk>/stream/", stream.cluster_stream, name="stream"),
    path(HOST, hostpage.host_detail, name="host"),
    path(f"{HOST}what-if/", hostpage.host_what_if, name="what-if"),
    path(f"{HOST}settings/", hostpage.HostSettings.as_view(), name="host-settings"),
    path(
        f"{HOST}rotate-credentials/",
        hostpage.HostRotateCredentials.as_view(),
        name="rotate-credentials",
    ),
    path("<int:pk>/hosts/add/", views.add_hosts, name="add-hosts"),
    path(f"{HOST}remove/", hostpage.HostRemove.as_view(), name="remove-host"),
    path(f"{HOST}repair/", hostpage.HostRepair.as_view(), name="repair-host"),
    path(f"{HOST}check-key/", hostpage.HostCheckKey.as_view(), name="check-host-key"),
    path(f"{HOST}join-domain/", hostpage.HostJoinDomain.as_view(), name="join-domain"),
    path(f"{HOST}maintenance/", views.HostMaintenance.as_view(), name="maintenance"),
    path(f"{HOST}acknowledge-down/", views.HostAcknowledgeDown.as_view(), name="acknowledge-down"),
    path("<int:pk>/fence/", views.FenceList.as_view(), name="fence"),
    path("<int:pk>/fence/metadata/", views.fence_metadata, name="fence-metadata"),
    *edit_urls("<int:pk>/fence/", "fence", views.FenceEdit, views.FenceDelete, "device_pk"),
    path("<int:pk>/fence/<int:device_pk>/test/", views.FenceTest.as_view(), name="fence-test"),
]
