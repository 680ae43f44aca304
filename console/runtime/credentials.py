"""Each agent's broker identity: a Redis user of its own and a sealing key.

- ``issue(name)``: a new random password and a new sealing key for one agent; the console
  keeps the password's SHA-256 (never the password) and the sealing key encrypted with its own
  key (console/core/crypto.py), creates the Redis user (console/runtime/broker.py) and hands
  both back once, to be written on the host (the SSH bootstrap's env file).
- ``ensure_users(r)``: re-creates, from the stored hashes, every agent user Redis lacks (a
  Redis restart or replacement); the drainer runs it at start and every few seconds.
- ``revoke(name)``: ``ACL DELUSER``, the host's inbound list and queue keys, and the stored
  credential; run when a host is deleted (a ``post_delete`` signal, whatever deleted it).
- ``seal_key(name)``: the key that seals secrets for that agent alone (console/runtime/seal.py).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import Fernet

from console.core import crypto
from console.runtime import broker
from console.runtime.models import AgentCredential

log = logging.getLogger("haven.credentials")


@dataclass(frozen=True)
class Issued:
    """What the host must be given (once; never stored or logged)."""

    name: str
    user: str
    password: str = field(repr=False)
    seal_key: str = field(repr=False)


def _redis() -> Any:
    from console.runtime.store import client

    return client()


def issue(name: str, r: Any = None) -> Issued:
    """New password and sealing key for agent ``name``; its Redis user is (re)created now."""
    password = secrets.token_urlsafe(32)
    seal = Fernet.generate_key().decode()
    digest = broker.password_hash(password)
    AgentCredential.objects.update_or_create(
        name=name,
        defaults={
            "password_sha256": digest,
            "seal_key_encrypted": crypto.encrypt_json({"key": seal}),
        },
    )
    broker.ensure_user(r or _redis(), name, digest)
    return Issued(name, broker.agent_redis_user(name), password, seal)


def ensure_users(r: Any = None) -> list[str]:
    """Create the Redis user of every stored credential Redis does not have; the names."""
    r = r or _redis()
    existing = {u if isinstance(u, str) else u.decode() for u in r.execute_command("ACL", "USERS")}
    created = []
    for name, digest in AgentCredential.objects.values_list("name", "password_sha256"):
        if broker.agent_redis_user(name) not in existing:
            broker.ensure_user(r, name, digest)
            created.append(name)
    return created


def revoke(name: str, r: Any = None) -> None:
    """The agent can no longer log in; its lists and queue are gone; nothing is stored."""
    deleted, _ = AgentCredential.objects.filter(name=name).delete()
    if not deleted:
        return  # never issued: no Redis user to remove
    try:
        r = r or _redis()
        broker.delete_user(r, name)
        r.delete(*broker.agent_keys(name).values())
    except Exception as exc:  # Redis away: the user is not re-created (nothing stored)
        log.warning("could not remove the Redis user of %s now: %s", name, exc)


def seal_key(name: str) -> str | None:
    token = (
        AgentCredential.objects.filter(name=name)
        .values_list("seal_key_encrypted", flat=True)
        .first()
    )
    if not token:
        return None
    key = crypto.decrypt_json(token).get("key")
    return str(key) if key else None
