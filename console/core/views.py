"""What every view builds on: role checks that answer 403, the health check, and the
plain-language error pages (no traceback ever reaches a browser). The home page is the
clusters' (console/clusters/home.py): core knows no domain app."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from console.core import roles

View = Callable[..., HttpResponse]
ROLE_CHECKS = {"read": roles.can_read, "operate": roles.can_operate, "admin": roles.can_admin}
WHAT = {"read": "see this", "operate": "operate services and hosts", "admin": "change this"}


def forbidden(request: HttpRequest, message: str) -> HttpResponse:
    return render(request, "403.html", {"message": message}, status=403)


def role_required(write: str = "admin", read: str = "read") -> Callable[[View], View]:
    """Login first; GET/HEAD need the ``read`` role, every other verb the ``write`` role.

    A person whose role does not allow it gets a plain 403 page, also when a button they
    cannot see is posted anyway.
    """

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            need = read if request.method in ("GET", "HEAD") else write
            if not ROLE_CHECKS[need](request.user):
                return forbidden(request, f"Your role does not allow you to {WHAT[need]}.")
            return view(request, *args, **kwargs)

        return login_required(wrapper)

    return decorate


def healthz(request: HttpRequest) -> JsonResponse:
    """Unauthenticated liveness probe: answers as soon as the web process serves requests."""
    return JsonResponse({"status": "ok"})


def _api(request: HttpRequest) -> bool:
    """Whether the request is for the API, which answers every error in JSON."""
    return request.path.startswith("/api/")


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _api(request):
        return JsonResponse({"detail": "Bad request."}, status=400)
    return render(request, "400.html", status=400)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _api(request):
        return JsonResponse({"detail": f"Nothing at {request.path}."}, status=404)
    return render(request, "404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    if _api(request):
        return JsonResponse(
            {"detail": "The console failed to answer this request; the error is in its log."},
            status=500,
        )
    return render(request, "500.html", status=500)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _api(request):
        return JsonResponse(
            {"detail": str(exception) or "Your role does not allow this."}, status=403
        )
    return forbidden(request, str(exception) or "Your role does not allow this.")
