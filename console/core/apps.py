from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Shared pieces every Haven app builds on: roles, validators, API base classes."""

    name = "console.core"
    label = "core"

    def ready(self) -> None:
        from console.core import auth  # noqa: F401  (sign-in events and failures)
