from django.apps import AppConfig

from console.core import colours


class ServicesConfig(AppConfig):
    name = "console.services"
    label = "services"

    def ready(self) -> None:
        from console.services.choices import SERVICE_STATE_COLOURS

        colours.register("service", SERVICE_STATE_COLOURS)
