from django.urls import path

from console.storage import views

app_name = "storage"
urlpatterns = [
    path("<int:pk>/hosts/<int:host_pk>/storage/", views.storage, name="host"),
    path("<int:pk>/hosts/<int:host_pk>/storage/live/", views.storage_live, name="live"),
    path("<int:pk>/hosts/<int:host_pk>/storage/forms/", views.storage_forms, name="forms"),
    path("<int:pk>/hosts/<int:host_pk>/storage/probe/", views.probe, name="probe"),
    path("<int:pk>/hosts/<int:host_pk>/storage/vg/", views.vg_create, name="vg-create"),
    path("<int:pk>/hosts/<int:host_pk>/storage/lv/", views.lv_create, name="lv-create"),
    path(
        "<int:pk>/hosts/<int:host_pk>/storage/lv/<int:lv_pk>/extend/",
        views.lv_extend,
        name="lv-extend",
    ),
    path(
        "<int:pk>/hosts/<int:host_pk>/storage/lv/<int:lv_pk>/journals/",
        views.lv_journals,
        name="lv-journals",
    ),
    path(
        "<int:pk>/hosts/<int:host_pk>/storage/lv/<int:lv_pk>/remove/",
        views.lv_remove,
        name="lv-remove",
    ),
]
