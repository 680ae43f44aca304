from django.urls import path

from console.monitoring import views

app_name = "monitoring"
urlpatterns = [
    path("", views.hook_list, name="hooks"),
    path("new/", views.hook_edit, name="hook-new"),
    path("<int:pk>/", views.hook_edit, name="hook-edit"),
    path("<int:pk>/delete/", views.hook_delete, name="hook-delete"),
    path("<int:pk>/test/", views.hook_test, name="hook-test"),
]
