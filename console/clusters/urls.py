from django.urls import path

from console.clusters import hostpage, stream, views
from console.core.generic import edit_urls

app_name = "clusters"
urlpatterns = [
    path("new/", views.create, name="create"),
    path("<int:pk>/", views.detail, name="detail"),
    path("<int:pk>/live/", views.live, name="live"),
    path("<int:pk>/policy/", views.PolicyEdit.as_view(), name="policy"),
    path("<int:pk>/stream/", stream.cluster_stream, name="stream"),
    path("<int:pk>/hosts/<int:host_pk>/", hostpage.host_detail, name="host"),
    path("<int:pk>/hosts/<int:host_pk>/what-if/", hostpage.host_what_if, name="what-if"),
    path("<int:pk>/hosts/<int:host_pk>/settings/", hostpage.host_settings, name="host-settings"),
    path(
        "<int:pk>/hosts/<int:host_pk>/rotate-credentials/",
        hostpage.host_rotate_credentials,
        name="rotate-credentials",
    ),
    path("<int:pk>/hosts/add/", views.add_hosts, name="add-hosts"),
    path("<int:pk>/hosts/<int:host_pk>/remove/", hostpage.host_remove, name="remove-host"),
    path("<int:pk>/hosts/<int:host_pk>/repair/", hostpage.host_repair, name="repair-host"),
    path("<int:pk>/hosts/<int:host_pk>/check-key/", hostpage.host_check_key, name="check-host-key"),
    path("<int:pk>/hosts/<int:host_pk>/maintenance/", views.host_maintenance, name="maintenance"),
    path(
        "<int:pk>/hosts/<int:host_pk>/acknowledge-down/",
        views.host_acknowledge_down,
        name="acknowledge-down",
    ),
    path("<int:pk>/fence/", views.FenceList.as_view(), name="fence"),
    path("<int:pk>/fence/metadata/", views.fence_metadata, name="fence-metadata"),
    *edit_urls("<int:pk>/fence/", "fence", views.FenceEdit, views.FenceDelete, "device_pk"),
    path("<int:pk>/fence/<int:device_pk>/test/", views.fence_test, name="fence-test"),
]
