from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from console.core.api import HavenViewSet
from console.core.services import actor_name
from console.monitoring import services
from console.monitoring.api import serializers
from console.monitoring.filtersets import AlertHookFilterSet
from console.monitoring.models import AlertHook


class AlertHookViewSet(HavenViewSet):
    """Where alerts go: webhooks (JSON POST) and e-mail; ``test`` sends a test alert now."""

    queryset = AlertHook.objects.select_related("cluster")
    serializer_class = serializers.AlertHookSerializer
    filterset_class = AlertHookFilterSet

    @extend_schema(request=None, responses=serializers.AlertTestResultSerializer)
    @action(detail=True, methods=["post"])
    def test(self, request: Request, pk: Any = None) -> Response:
        hook = self.get_object()
        result = services.test_hook(hook, actor=actor_name(request.user))
        return Response({"hook": hook.name, "result": result})
