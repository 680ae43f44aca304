"""Secrets at rest (fence credentials): Fernet, with a key from settings.

``HAVEN_FERNET_KEY`` may be set to a Fernet key; by default one is derived from SECRET_KEY, so
a database copied without the ``var/`` folder (or the environment) does not reveal passwords.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


def _fernet() -> Fernet:
    key = getattr(settings, "HAVEN_FERNET_KEY", None)
    if not key:
        digest = hashlib.sha256(b"haven-fernet:" + settings.SECRET_KEY.encode()).digest()
        key = base64.urlsafe_b64encode(digest)
    return Fernet(key)


def encrypt_json(value: dict[str, Any]) -> str:
    """Encrypt a dict of secrets into a text token for the database."""
    if not value:
        return ""
    return _fernet().encrypt(json.dumps(value, sort_keys=True).encode()).decode()


def decrypt_json(token: str) -> dict[str, Any]:
    """The secrets back; a token made with another key raises ValueError (never logs it)."""
    if not token:
        return {}
    try:
        data = _fernet().decrypt(token.encode())
    except InvalidToken as exc:
        raise ValueError("the stored secret cannot be decrypted with this console's key") from exc
    result: dict[str, Any] = json.loads(data)
    return result
