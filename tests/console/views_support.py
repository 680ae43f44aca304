"""Shared helpers of the view tests: a logged-in Django test client per role."""

from __future__ import annotations

import html

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
