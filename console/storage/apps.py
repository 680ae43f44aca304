from django.apps import AppConfig


class StorageConfig(AppConfig):
    name = "console.storage"
    label = "storage"

    def ready(self) -> None:
        # Registers the on_step_success hooks that store what storage steps report.
        from console.storage import services  # noqa: F401
