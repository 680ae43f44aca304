"""The service list's query: search, filters, sort — one parser for the page and the API.

``?q=web&state=red&host=et-virt05&domain=bias-a&sort=-memory`` — every value is checked; a bad
one is named in ``errors`` (the page shows it, the API answers 400) and ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q, QuerySet

from console.services.choices import ServiceState
from console.services.models import VmService

#: states that need a person's eye (red) — plus "stopped although it should run"
PROBLEM = Q(state__in=("failed", "fence", "waiting", "recovering")) | Q(
    state="stopped", desired_state="started"
)
GROUPS: dict[str, Q] = {
    "red": PROBLEM,
    "green": Q(state=ServiceState.STARTED),
    "moving": Q(state__in=("migrating", "relocating", "starting", "stopping")),
}
SORTS: dict[str, tuple[str, ...]] = {
    "name": ("name",),
    "-name": ("-name",),
    "state": ("state", "name"),
    "host": ("host__name", "name"),
    "since": ("-state_since", "name"),
    "memory": ("-memory_mb", "name"),
    "priority": ("-priority", "name"),
}
MAX_Q = 64


@dataclass
class ServiceQuery:
    q: str = ""
    state: str = ""
    host: str = ""
    domain: str = ""
    sort: str = "name"
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> ServiceQuery:
        def get(key: str) -> str:
            value = params.get(key, "")
            return str(value if value is not None else "").strip()

        out = cls(q=get("q"), state=get("state"), host=get("host"), domain=get("domain"))
        sort = get("sort") or "name"
        if len(out.q) > MAX_Q or "\x00" in out.q:
            out.errors["q"] = f"Search for at most {MAX_Q} characters."
            out.q = ""
        if out.state and out.state not in GROUPS and out.state not in ServiceState.values:
            choices = ", ".join([*GROUPS, *ServiceState.values])
            out.errors["state"] = f"{out.state!r} is not a state; use one of {choices}."
            out.state = ""
        if sort not in SORTS:
            out.errors["sort"] = f"{sort!r} is not a sort; use one of {', '.join(SORTS)}."
            sort = "name"
        out.sort = sort
        return out

    def apply(self, qs: QuerySet[VmService]) -> QuerySet[VmService]:
        if self.q:
            qs = qs.filter(
                Q(name__icontains=self.q)
                | Q(host__name__icontains=self.q)
                | Q(state_reason__icontains=self.q)
            )
        if self.state in GROUPS:
            qs = qs.filter(GROUPS[self.state])
        elif self.state:
            qs = qs.filter(state=self.state)
        if self.host == "-":
            qs = qs.filter(host__isnull=True)
        elif self.host:
            qs = qs.filter(Q(host__name=self.host) | Q(target__name=self.host))
        if self.domain == "-":
            qs = qs.filter(failover_domain__isnull=True)
        elif self.domain:
            qs = qs.filter(failover_domain__name=self.domain)
        return qs.order_by(*SORTS[self.sort])

    def params(self) -> dict[str, str]:
        """The non-default values, for links that keep the filters."""
        values = {
            "q": self.q,
            "state": self.state,
            "host": self.host,
            "domain": self.domain,
            "sort": "" if self.sort == "name" else self.sort,
        }
        return {k: v for k, v in values.items() if v}
