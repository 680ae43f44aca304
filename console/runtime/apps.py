from django.apps import AppConfig


class RuntimeConfig(AppConfig):
    """The console at work: ingestion of agent messages, the HA runner, operations."""

    name = "console.runtime"
    label = "runtime"

    def ready(self) -> None:
        # The console's Celery app must be the current app wherever Django runs (web,
        # workers, tests), so that shared tasks are sent with its broker settings.
        import console.celery
        import console.runtime.operations  # noqa: F401  (registers its job-step hooks)
