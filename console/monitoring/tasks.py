"""The alert delivery task (console worker, queue ``console``)."""

from __future__ import annotations

from celery import shared_task

from console.monitoring import services


@shared_task(name="haven.console.alert", ignore_result=True)
def alert(event_id: int, only_hook: int | None = None) -> None:
    services.deliver(event_id, only_hook)
