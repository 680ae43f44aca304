"""``manage.py drf_create_token USER``: a new API token for a user, printed once.

(Replaces Django REST framework's command of the same name: the console keeps only the token's
SHA-256, so a token can be shown only when it is made.)
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from console.core.models import ApiToken


class Command(BaseCommand):
    help = "Make a new API token for a user and print it (it is never shown again)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "-r", "--reset", action="store_true", help="revoke the user's other tokens first"
        )

    def handle(self, *args: Any, username: str, reset: bool, **options: Any) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"Cannot create the token: user {username!r} does not exist.")
        if reset:
            ApiToken.objects.filter(user=user).delete()
        _, key = ApiToken.issue(user)
        self.stdout.write(f"Generated token {key} for user {username}")
