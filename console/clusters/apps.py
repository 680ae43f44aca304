from django.apps import AppConfig

from console.core import colours


class ClustersConfig(AppConfig):
    name = "console.clusters"
    label = "clusters"

    def ready(self) -> None:
        from console.clusters.choices import HOST_STATE_COLOURS

        colours.register("host", HOST_STATE_COLOURS)
