from django.urls import path

from console.core.generic import edit_urls
from console.services import views

app_name = "services"
urlpatterns = [
    path("<int:pk>/domains/", views.DomainList.as_view(), name="domains"),
    *edit_urls("<int:pk>/domains/", "domain", views.DomainEdit, views.DomainDelete, "domain_pk"),
    path("<int:pk>/services/import/", views.service_import, name="import"),
    *edit_urls(
        "<int:pk>/services/", "service", views.ServiceEdit, views.ServiceDelete, "service_pk"
    ),
    path("<int:pk>/services/<int:service_pk>/migrate/", views.service_migrate, name="migrate"),
    path(
        "<int:pk>/services/<int:service_pk>/<str:op>/",
        views.ServiceOperation.as_view(),
        name="operation",
    ),
]
