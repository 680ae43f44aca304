from django.urls import path

from console.events import views

app_name = "events"
urlpatterns = [
    path("", views.EventList.as_view(), name="list"),
    path("incidents/", views.IncidentList.as_view(), name="incidents"),
]
