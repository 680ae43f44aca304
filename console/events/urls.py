from django.urls import path

from console.events import views

app_name = "events"
urlpatterns = [
    path("", views.event_list, name="list"),
    path("incidents/", views.incident_list, name="incidents"),
]
