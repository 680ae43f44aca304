from django.urls import path

from console.services import views

app_name = "services"
urlpatterns = [
    path("<int:pk>/domains/", views.domain_list, name="domains"),
    path("<int:pk>/domains/new/", views.domain_edit, name="domain-new"),
    path("<int:pk>/domains/<int:domain_pk>/", views.domain_edit, name="domain-edit"),
    path("<int:pk>/domains/<int:domain_pk>/delete/", views.domain_delete, name="domain-delete"),
    path("<int:pk>/services/new/", views.service_edit, name="service-new"),
    path("<int:pk>/services/import/", views.service_import, name="import"),
    path("<int:pk>/services/<int:service_pk>/", views.service_edit, name="service-edit"),
    path("<int:pk>/services/<int:service_pk>/delete/", views.service_delete, name="service-delete"),
    path("<int:pk>/services/<int:service_pk>/migrate/", views.service_migrate, name="migrate"),
    path(
        "<int:pk>/services/<int:service_pk>/<str:op>/",
        views.service_operation,
        name="operation",
    ),
]
