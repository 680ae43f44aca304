"""Shared helpers of the view tests: a logged-in Django test client per role."""

from __future__ import annotations

import html
from typing import Any

from django.contrib.auth.models import Group, User
from django.http import HttpResponse
from django.test import Client


def login(role: str | None, name: str | None = None) -> Client:
    """A session client for a user with this role ('admin', 'operator', 'viewer', None)."""
    user = User.objects.create_user(name or f"{role or 'nobody'}-ui", password="pw-for-tests-only")
    if role is not None:
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    client = Client()
    client.force_login(user)
    return client


def text(response: HttpResponse) -> str:
    """The page as a person reads it (HTML entities decoded)."""
    return html.unescape(response.content.decode())


def et_world(**domain_flags: bool) -> dict[str, Any]:
    """The pages' usual cluster: "et" with the article's hosts, failover domain prefer5
    (``domain_flags``) led by the first host, guest1 started there in it, and that host's
    fence device ipmi5."""
    from tests.console import factories as f

    cluster = f.ClusterFactory(name="et")
    hosts = f.article_hosts(cluster)
    domain = f.FailoverDomainFactory(cluster=cluster, name="prefer5", **domain_flags)
    f.FailoverDomainMemberFactory(domain=domain, host=hosts[0], priority=1)
    svc = f.VmServiceFactory(
        cluster=cluster, name="guest1", failover_domain=domain, state="started", host=hosts[0]
    )
    device = f.FenceDeviceFactory(cluster=cluster, host=hosts[0], name="ipmi5")
    return {"cluster": cluster, "hosts": hosts, "domain": domain, "service": svc, "fence": device}
