from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    """What the console tells machines: Prometheus metrics and alert hooks (webhook, e-mail)."""

    name = "console.monitoring"
    label = "monitoring"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from console.events.models import Event
        from console.monitoring import services

        post_save.connect(services.on_event, sender=Event, dispatch_uid="haven-alerts")
