"""One permission class decides, per verb, for every API endpoint."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from console.core import roles


class RolePermission(BasePermission):
    """Reads need any role; writes need admin, or operator for the view's ``operator_actions``.
    ``read_actions`` are POSTs that change nothing (a simulation): any role may call them."""

    message = "Your role does not allow this."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not user or not user.is_authenticated:
            return False
        action = getattr(view, "action", None)
        if request.method in SAFE_METHODS or action in getattr(view, "read_actions", ()):
            return roles.can_read(user)
        if roles.can_admin(user):
            return True
        return action in getattr(view, "operator_actions", ()) and roles.can_operate(user)
