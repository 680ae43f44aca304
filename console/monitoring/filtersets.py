"""The alert hooks' list: its query parameters (page and API)."""

from __future__ import annotations

from console.core.filtersets import FilterSet
from console.monitoring.models import AlertHook


class AlertHookFilterSet(FilterSet):
    model = AlertHook
    fields = ("name", "kind", "cluster", "enabled")
