from django.apps import AppConfig


class RuntimeConfig(AppConfig):
    """The console at work: ingestion of agent messages, the HA runner, operations."""

    name = "console.runtime"
    label = "runtime"

    def ready(self) -> None:
        # The console's Celery app must be the current app wherever Django runs (web,
        # workers, tests), so that shared tasks are sent with its broker settings.
        from django.db.models.signals import post_delete

        import console.celery
        import console.runtime.credentials
        import console.runtime.operations  # noqa: F401  (register their job-step hooks)
        from console.clusters.models import Host

        post_delete.connect(_revoke_agent, sender=Host, dispatch_uid="haven-revoke-agent")


def _revoke_agent(sender: object, instance: object, **_kwargs: object) -> None:
    """A deleted host's agent loses its broker login (API, pages, admin or cascade alike)."""
    from console.runtime import credentials

    credentials.revoke(str(getattr(instance, "name", "")))
