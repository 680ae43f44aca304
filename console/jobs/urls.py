from django.urls import path

from console.jobs import views

app_name = "jobs"
urlpatterns = [
    path("", views.JobList.as_view(), name="list"),
    path("<int:pk>/", views.job_detail, name="detail"),
    path("<int:pk>/live/", views.job_live, name="live"),
]
