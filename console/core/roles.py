"""The three roles (Django groups, created by a migration) and what each may do.

- ``admin``: everything (also any superuser);
- ``operator``: reads everything; start/stop/migrate/relocate/maintenance operations;
- ``viewer``: reads everything, changes nothing.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

ADMIN, OPERATOR, VIEWER = "admin", "operator", "viewer"
ROLES = (ADMIN, OPERATOR, VIEWER)


def roles_of(user: AbstractBaseUser | AnonymousUser) -> frozenset[str]:
    if not user.is_authenticated:
        return frozenset()
    if getattr(user, "is_superuser", False):
        return frozenset(ROLES)
    names = frozenset(getattr(user, "groups").values_list("name", flat=True))  # noqa: B009
    if ADMIN in names:
        return frozenset(ROLES)
    if OPERATOR in names:
        return frozenset({OPERATOR, VIEWER})
    return names & {VIEWER}


def can_read(user: AbstractBaseUser | AnonymousUser) -> bool:
    return bool(roles_of(user))


def can_operate(user: AbstractBaseUser | AnonymousUser) -> bool:
    return OPERATOR in roles_of(user)


def can_admin(user: AbstractBaseUser | AnonymousUser) -> bool:
    return ADMIN in roles_of(user)
