"""Roles per verb: viewers read, operators read (and operate, later), admins write."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from tests.console import factories as f

ENDPOINTS = {
    "clusters": f.ClusterFactory,
    "hosts": f.HostFactory,
    "fence-devices": f.FenceDeviceFactory,
    "block-devices": f.BlockDeviceFactory,
    "volume-groups": f.VolumeGroupFactory,
    "logical-volumes": f.LogicalVolumeFactory,
    "filesystems": f.FilesystemFactory,
    "failover-domains": f.FailoverDomainFactory,
    "services": f.VmServiceFactory,
    "jobs": f.JobFactory,
    "job-events": f.JobEventFactory,
}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_readers_read_but_do_not_write(
    make_client: Callable[[str | None], APIClient], endpoint: str, role: str
) -> None:
    obj = ENDPOINTS[endpoint]()
    api = make_client(role)
    assert api.get(f"/api/{endpoint}/").status_code == 200
    assert api.get(f"/api/{endpoint}/{obj.pk}/").status_code == 200
    assert api.post(f"/api/{endpoint}/", {}, format="json").status_code == 403
    assert api.patch(f"/api/{endpoint}/{obj.pk}/", {}, format="json").status_code == 403
    assert api.delete(f"/api/{endpoint}/{obj.pk}/").status_code == 403
    assert type(obj).objects.filter(pk=obj.pk).exists()


@pytest.mark.parametrize("endpoint", [*ENDPOINTS, "events"])
def test_anonymous_gets_401(make_client: Callable[[str | None], APIClient], endpoint: str) -> None:
    response = make_client(None).get(f"/api/{endpoint}/")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Token")


def test_user_without_role_reads_nothing(db: None) -> None:
    from django.contrib.auth.models import User

    api = APIClient()
    api.force_authenticate(User.objects.create_user("nobody", password="pw-for-tests-only"))
    assert api.get("/api/clusters/").status_code == 403


def test_token_authentication(db: None) -> None:
    from django.contrib.auth.models import Group, User

    from console.core.models import ApiToken

    user = User.objects.create_user("script", password="pw-for-tests-only")
    user.groups.add(Group.objects.get(name="viewer"))
    token, key = ApiToken.issue(user)
    assert key not in token.digest and len(token.digest) == 64
    api = APIClient()
    assert api.get("/api/clusters/").status_code == 401
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/clusters/").status_code == 200
    api.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert api.get("/api/clusters/").status_code == 401


def test_roles_created_by_migration(db: None) -> None:
    from django.contrib.auth.models import Group

    assert set(Group.objects.values_list("name", flat=True)) >= {"admin", "operator", "viewer"}


def test_superuser_is_admin(db: None) -> None:
    from django.contrib.auth.models import User

    api = APIClient()
    api.force_authenticate(User.objects.create_superuser("root", password="pw-for-tests-only"))
    assert api.post("/api/clusters/", {"name": "c1"}, format="json").status_code == 201
