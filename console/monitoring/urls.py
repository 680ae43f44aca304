from django.urls import path

from console.core.generic import edit_urls
from console.monitoring import views

app_name = "monitoring"
urlpatterns = [
    path("", views.HookList.as_view(), name="hooks"),
    *edit_urls("", "hook", views.HookEdit, views.HookDelete),
    path("<int:pk>/test/", views.hook_test, name="hook-test"),
]
