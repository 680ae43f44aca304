from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.test import APIClient


@pytest.fixture
def make_client(db: None) -> Callable[[str | None], APIClient]:
    """An API client logged in with a role ('admin', 'operator', 'viewer') or anonymous."""

    def make(role: str | None) -> APIClient:
        client = APIClient()
        if role is not None:
            user = User.objects.create_user(f"{role}-user", password="pw-for-tests-only")
            # get_or_create: a transactional test before this one flushed the roles migration
            user.groups.add(Group.objects.get_or_create(name=role)[0])
            client.force_authenticate(user)
        return client

    return make


@pytest.fixture
def admin_api(make_client: Callable[[str | None], APIClient]) -> APIClient:
    return make_client("admin")


@pytest.fixture
def viewer_api(make_client: Callable[[str | None], APIClient]) -> APIClient:
    return make_client("viewer")


@pytest.fixture
def operator_api(make_client: Callable[[str | None], APIClient]) -> APIClient:
    return make_client("operator")


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    """PBKDF2 makes every created user cost ~0.3 s; tests do not need the strength."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Tests drive the runner themselves; the live tests turn this back on.
    settings.HAVEN_WAKE_ON_COMMAND = False
