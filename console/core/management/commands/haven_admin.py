"""Create the first admin user with a one-time password, printed once and never stored."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Create the 'admin' user (role admin) with a random one-time password, or --reset it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--reset", action="store_true", help="give an existing user a new one")

    def handle(self, *args: Any, username: str, reset: bool, **options: Any) -> None:
        user = User.objects.filter(username=username).first()
        if user is not None and not reset:
            self.stdout.write(
                f"User {username!r} exists; its password is unchanged "
                f"(new one: manage.py haven_admin --reset)."
            )
            return
        password = secrets.token_urlsafe(12)
        if user is None:
            user = User.objects.create_user(username, password=password, is_staff=True)
        else:
            user.set_password(password)
            user.save(update_fields=["password"])
        user.groups.add(Group.objects.get(name="admin"))
        self.stdout.write(f"Log in as {username!r} with the one-time password: {password}")
        self.stdout.write("Change it after logging in (admin site: /admin/password_change/).")
