"""The failover domains' and VM services' lists: their query parameters.

The cluster page's service list: ``?q=web&state=red&host=et-virt05&domain=bias-a&sort=-memory``
— every value is checked; a bad one is named in ``errors`` (the page shows it) and ignored.
The API's ``state`` is an exact state and its ``host`` a host's id, as they always were; the
page's ``state`` also takes a group (red, green, moving) and its ``host`` is a host's name
(running there or moving there; ``-`` for none).
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q

from console.core.filtersets import API, PAGE, Exact, FilterError, FilterSet, Method, one_of
from console.services.choices import ServiceState
from console.services.models import FailoverDomain, VmService

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


def _search_text(raw: str) -> str:
    if len(raw) > MAX_Q or "\x00" in raw:
        raise FilterError(f"Search for at most {MAX_Q} characters.")
    return raw


def _search(qs: Any, q: str) -> Any:
    return qs.filter(
        Q(name__icontains=q) | Q(host__name__icontains=q) | Q(state_reason__icontains=q)
    )


def _state(qs: Any, state: str) -> Any:
    return qs.filter(GROUPS[state] if state in GROUPS else Q(state=state))


def _on_host(qs: Any, host: str) -> Any:
    if host == "-":
        return qs.filter(host__isnull=True)
    return qs.filter(Q(host__name=host) | Q(target__name=host))


def _in_domain(qs: Any, domain: str) -> Any:
    if domain == "-":
        return qs.filter(failover_domain__isnull=True)
    return qs.filter(failover_domain__name=domain)


class FailoverDomainFilterSet(FilterSet):
    model = FailoverDomain
    fields = ("cluster", "name", "ordered", "restricted", "nofailback")


class ServiceFilterSet(FilterSet):
    model = VmService
    fields_surfaces = frozenset({API})
    fields = ("cluster", "name", "desired_state", "failover_domain", "recovery")
    state_exact = Exact("state", param="state", surfaces={API})
    host_id = Exact("host", param="host", surfaces={API})
    q = Method(_search, _search_text, surfaces={PAGE})
    state = Method(_state, one_of("state", [*GROUPS, *ServiceState.values]), surfaces={PAGE})
    host = Method(_on_host, surfaces={PAGE})
    domain = Method(_in_domain, surfaces={PAGE})
    sort = Method(
        lambda qs, sort: qs.order_by(*SORTS[sort]),
        one_of("sort", SORTS),
        surfaces={PAGE},
        default="name",
    )
