"""API tokens (kept only as their SHA-256) and failed sign-ins (for the lockout)."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


def token_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiToken(models.Model):
    """An API token for scripts and the CLI. Only the SHA-256 of its text is stored: the text
    is shown once, when the token is made, and a copy of the database holds no usable token."""

    digest = models.CharField(max_length=64, primary_key=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    #: the first characters of the token, so a person can tell their tokens apart
    prefix = models.CharField(max_length=8)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @classmethod
    def issue(cls, user: Any) -> tuple[ApiToken, str]:
        """A new token for ``user``: the row, and the token's text (never stored)."""
        key = secrets.token_hex(20)
        token = cls.objects.create(digest=token_digest(key), user=user, prefix=key[:6])
        return token, key


class LoginFailure(models.Model):
    """One failed sign-in (page, admin or ``POST /api/token/``): by user name and address."""

    time = models.DateTimeField(default=timezone.now, db_index=True)
    username = models.CharField(max_length=150, db_index=True)
    address = models.CharField(max_length=45, db_index=True)

    class Meta:
        ordering = ["-time"]

    def __str__(self) -> str:
        return f"{self.time:%Y-%m-%d %H:%M:%S} {self.username} from {self.address}"
