"""Sign-in: hashed API tokens, and a lockout after repeated failures.

After ``HAVEN_LOGIN_MAX_FAILURES`` failed sign-ins within ``HAVEN_LOGIN_WINDOW_S`` — for one
user name, or from one client address — every sign-in for it is refused for
``HAVEN_LOGIN_LOCKOUT_S``, the right password included (default: 10 in 10 minutes → 15
minutes). Every sign-in, success or failure, lands in the event log with the user name and the
address (never the password).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import user_logged_in, user_login_failed
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import PermissionDenied, ValidationError
from django.dispatch import receiver
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.throttling import AnonRateThrottle

from console.core.models import ApiToken, LoginFailure, token_digest
from console.events.services import record


class HashedTokenAuthentication(TokenAuthentication):
    """``Authorization: Token <text>``, looked up by the text's SHA-256."""

    model = ApiToken

    def authenticate_credentials(self, key: str) -> tuple[Any, ApiToken]:
        token = ApiToken.objects.select_related("user").filter(digest=token_digest(key)).first()
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        return token.user, token


class LoginRateThrottle(AnonRateThrottle):
    """``POST /api/token/`` per client address, at ``HAVEN_LOGIN_RATE`` (e.g. "30/min")."""

    scope = "login"

    def get_rate(self) -> str:
        return str(settings.HAVEN_LOGIN_RATE)


class LockedOut(Exception):
    def __init__(self, seconds: int) -> None:
        minutes = max(1, math.ceil(seconds / 60))
        super().__init__(
            "Too many failed sign-ins for this user or from this address: sign-in is locked "
            f"for {minutes} more minute{'s' if minutes != 1 else ''}, even with the right "
            "password."
        )
        self.seconds = seconds


def client_address(request: Any) -> str:
    """The address the request came from (the proxy's own, if any: never a header's)."""
    meta = getattr(request, "META", None) or {}
    return str(meta.get("REMOTE_ADDR") or "unknown")[:45]


def _locked_until(**match: str) -> dt.datetime | None:
    limit = int(settings.HAVEN_LOGIN_MAX_FAILURES)
    times = list(
        LoginFailure.objects.filter(**match)
        .order_by("-time")
        .values_list("time", flat=True)[:limit]
    )
    window = dt.timedelta(seconds=settings.HAVEN_LOGIN_WINDOW_S)
    if len(times) < limit or times[0] - times[-1] > window:
        return None
    return times[0] + dt.timedelta(seconds=settings.HAVEN_LOGIN_LOCKOUT_S)


def check_lockout(username: str, address: str) -> None:
    """Raise LockedOut while the user name or the address is locked."""
    now = timezone.now()
    until = [t for t in (_locked_until(username=username), _locked_until(address=address)) if t]
    if until and max(until) > now:
        raise LockedOut(int((max(until) - now).total_seconds()))


def refuse_locked(request: Any, username: str, via: str) -> None:
    """check_lockout, with the refusal recorded in the event log."""
    address = client_address(request)
    try:
        check_lockout(username, address)
    except LockedOut:
        record(
            actor=username or "anonymous",
            verb="login",
            object_type="user",
            object_name=username,
            result="refused",
            message=f"locked out: {via} from {address}",
            data={"address": address, "via": via},
        )
        raise


class LockoutBackend(ModelBackend):
    """Django's user/password check, refused outright while the user or address is locked
    (covers every form that signs in, the admin's included)."""

    def authenticate(
        self, request: Any, username: str | None = None, password: str | None = None, **kw: Any
    ) -> Any:
        try:
            check_lockout(username or "", client_address(request))
        except LockedOut as exc:
            if request is not None:
                request.haven_locked_out = True
            raise PermissionDenied(str(exc)) from exc
        return super().authenticate(request, username=username, password=password, **kw)


def _via(request: Any) -> str:
    path = str(getattr(request, "path", ""))
    return (
        "api" if path.startswith("/api/") else ("admin" if path.startswith("/admin/") else "page")
    )


@receiver(user_login_failed)
def login_failed(sender: Any, credentials: dict[str, Any], request: Any = None, **kw: Any) -> None:
    username = str(credentials.get("username") or "")[:150]
    address, via = client_address(request), _via(request)
    locked = bool(getattr(request, "haven_locked_out", False))
    if not locked:
        LoginFailure.objects.create(username=username, address=address)
        keep = dt.timedelta(seconds=settings.HAVEN_LOGIN_WINDOW_S + settings.HAVEN_LOGIN_LOCKOUT_S)
        LoginFailure.objects.filter(time__lt=timezone.now() - 2 * keep).delete()
    record(
        actor=username or "anonymous",
        verb="login",
        object_type="user",
        object_name=username,
        result="refused" if locked else "failed",
        message=f"{'locked out' if locked else 'wrong user name or password'}: "
        f"{via} from {address}",
        data={"address": address, "via": via},
    )


def login_succeeded(user: Any, request: Any, via: str) -> None:
    address = client_address(request)
    record(
        actor=user.get_username(),
        verb="login",
        object_type="user",
        object_name=user.get_username(),
        message=f"{via} from {address}",
        data={"address": address, "via": via},
    )


@receiver(user_logged_in)
def logged_in(sender: Any, request: Any, user: Any, **kw: Any) -> None:
    login_succeeded(user, request, _via(request))


class LockoutFormMixin:
    """A sign-in form that says plainly when sign-in is locked (before any password check)."""

    cleaned_data: dict[str, Any]
    request: Any

    def clean(self) -> dict[str, Any]:
        username = str(self.cleaned_data.get("username") or "")
        if username:
            try:
                refuse_locked(self.request, username, _via(self.request))
            except LockedOut as exc:
                raise ValidationError(str(exc), code="locked") from exc
        return super().clean()  # type: ignore[misc,no-any-return]


class LoginForm(LockoutFormMixin, AuthenticationForm):
    """The sign-in page's form."""


class AdminLoginForm(LockoutFormMixin, AdminAuthenticationForm):
    """The admin site's sign-in form."""
