from django.urls import path

from console.storage import views

app_name = "storage"
urlpatterns = [
    path("<int:pk>/hosts/<int:host_pk>/storage/", views.storage, name="host"),
    path("<int:pk>/hosts/<int:host_pk>/storage/live/", views.storage_live, name="live"),
    path("<int:pk>/hosts/<int:host_pk>/storage/forms/", views.storage_forms, name="forms"),
    path("<int:pk>/hosts/<int:host_pk>/storage/probe/", views.probe, name="probe"),
    path("<int:pk>/hosts/<int:host_pk>/storage/vg/", views.VgCreate.as_view(), name="vg-create"),
    path("<int:pk>/hosts/<int:host_pk>/storage/lv/", views.LvCreate.as_view(), name="lv-create"),
    path(
        "<int:pk>/hosts/<int:host_pk>/storage/lv/<int:lv_pk>/extend/",
        views.LvExtend.as_view(),
        name="lv-extend",
    ),
    path(
        "<int:pk>/hosts/<int:host_pk>/storage/lv/<int:lv_pk>/journals/",
        views.LvJournals.as_view(),
        name="lv-journals",
    ),
    path(
        "<int:pk>/hosts/<int:host_pk>/storage/lv/<int:lv_pk>/remove/",
        views.LvRemove.as_view(),
        name="lv-remove",
    ),
]
