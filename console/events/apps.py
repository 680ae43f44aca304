from django.apps import AppConfig

from console.core import colours


class EventsConfig(AppConfig):
    name = "console.events"
    label = "events"

    def ready(self) -> None:
        from console.events.models import EVENT_RESULT_COLOURS, SEVERITY_COLOURS

        colours.register("event", EVENT_RESULT_COLOURS)
        colours.register("severity", SEVERITY_COLOURS)
