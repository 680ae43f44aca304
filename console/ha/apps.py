from django.apps import AppConfig


class RuntimeConfig(AppConfig):
    """The HA loop: agents' messages in, the HA runner, actions out (app label ``runtime``)."""

    name = "console.ha"
    label = "runtime"

    def ready(self) -> None:
        # The console's Celery app must be the current app wherever Django runs (web,
        # workers, tests), so that shared tasks are sent with its broker settings.
        from django.db.models.signals import post_delete, post_save

        import console.celery
        import console.ha.credentials
        import console.operations.commands  # noqa: F401  (register their job-step hooks)
        from console.clusters.models import FenceDevice, Host
        from console.services.models import FailoverDomain, FailoverDomainMember, VmService

        post_delete.connect(_revoke_agent, sender=Host, dispatch_uid="haven-revoke-agent")
        for model in (Host, FenceDevice, VmService, FailoverDomain, FailoverDomainMember):
            for signal in (post_save, post_delete):
                signal.connect(_config_changed, sender=model, dispatch_uid=f"haven-config-{model}")


def _revoke_agent(sender: object, instance: object, **_kwargs: object) -> None:
    """A deleted host's agent loses its broker login (API, pages, admin or cascade alike)."""
    from console.ha import credentials

    credentials.revoke(str(getattr(instance, "name", "")))


def _config_changed(sender: object, instance: object, **kwargs: object) -> None:
    """A cluster's configuration changed: its runner reads it again (console/ha/snapshot.py).
    In the writer's transaction, so the runner sees the new version with the new rows. The
    runner's own writes (a service's state) are queryset updates, which send no signal."""
    from django.db.models import F

    from console.ha.models import EngineState
    from console.services.models import FailoverDomain

    cluster_id = getattr(instance, "cluster_id", None)
    domain_id = getattr(instance, "domain_id", None)
    if cluster_id is None and domain_id is not None:  # a domain member: its domain's cluster
        cluster_id = (
            FailoverDomain.objects.filter(pk=domain_id).values_list("cluster_id", flat=True).first()
        )  # None when the domain is gone too: every cluster's runner reads again
    states = (
        EngineState.objects.all()
        if cluster_id is None
        else EngineState.objects.filter(cluster_id=cluster_id)
    )
    states.update(config_version=F("config_version") + 1)
