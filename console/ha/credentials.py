"""Each agent's broker identity: a Redis user of its own and a sealing key.

- ``issue(name)``: a new random password and a new sealing key for one agent; the console
  keeps the password's SHA-256 (never the password) and the sealing key encrypted with its own
  key (console/core/crypto.py), creates the Redis user (console/ha/broker.py) and hands
  both back once, to be written on the host (the SSH bootstrap's env file).
- ``ensure_users(r)``: re-creates, from the stored hashes, every agent user Redis lacks (a
  Redis restart or replacement); the drainer runs it at start and every few seconds.
- ``revoke(name)``: ``ACL DELUSER``, the host's inbound list and queue keys, and the stored
  credential; run when a host is deleted (a ``post_delete`` signal, whatever deleted it).
- ``seal_key(name)``: the key that seals secrets for that agent alone (agent/sealing.py).
- ``rotate(host, actor)``: a new password and sealing key, pushed to the agent over its own
  command channel (a ``rotate_credentials`` step, sealed with its current key): Redis accepts
  both passwords until the agent confirms it wrote the new ones into its ``--broker-file``;
  then the console keeps only the new ones, resets the user to the new password, and the agent
  restarts itself with them. Nothing is given to the host in clear, and the root password is
  not needed. An agent that is not online, has no credential (never bootstrapped by this
  console) or was not started with a broker file cannot be rotated that way: the answer says so,
  and bootstrapping the host again over SSH (the root password, used once) issues new ones.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import Fernet

from console.core import crypto
from console.ha import broker
from console.ha.models import AgentCredential
from console.jobs.services import on_step_success

log = logging.getLogger("haven.credentials")


@dataclass(frozen=True)
class Issued:
    """What the host must be given (once; never stored or logged)."""

    name: str
    user: str
    password: str = field(repr=False)
    seal_key: str = field(repr=False)


def _redis() -> Any:
    from console.ha.store import client

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


def rotate(host: Any, *, actor: Any) -> Any:
    """Start a rotation for ``host``'s agent (see the module docstring); its job."""
    from django.db import transaction

    from console.clusters.choices import HostState
    from console.core.errors import Refused
    from console.core.services import actor_name
    from console.events.services import record
    from console.jobs import services as jobs

    ssh = "bootstrap the host again over SSH (its root password, used once) to issue new ones"
    with transaction.atomic():
        credential = AgentCredential.objects.select_for_update().filter(name=host.name).first()
        if credential is None:
            raise Refused(f"{host.name} has no broker credential from this console: {ssh}.")
        if host.state not in (HostState.ONLINE, HostState.MAINTENANCE):
            raise Refused(
                f"{host.name} is {host.state}: new credentials reach an agent only over its own "
                f"command channel; bring it back online, or {ssh}."
            )
        password, seal = secrets.token_urlsafe(32), Fernet.generate_key().decode()
        credential.pending_sha256 = broker.password_hash(password)
        credential.pending_encrypted = crypto.encrypt_json({"password": password, "seal": seal})
        credential.save(update_fields=["pending_sha256", "pending_encrypted", "rotated"])
        # both passwords open the user until the agent has the new one
        _redis().execute_command(
            "ACL", "SETUSER", broker.agent_redis_user(host.name), f"#{credential.pending_sha256}"
        )
        who = actor_name(actor)
        job = jobs.create_job(
            "rotate-credentials",
            [jobs.StepSpec(host, "rotate_credentials", {}, secret_ref={"rotation": host.name})],
            cluster=host.cluster,
            created_by=actor,
            params={"host": host.name},
            message=f"{who}: new broker password and sealing key for {host.name}",
        )
        record(
            actor=who,
            verb="rotate-credentials",
            obj=host,
            cluster=host.cluster,
            result="info",
            message=f"job {job.pk}: new credentials sent over the agent's own channel",
        )
    return job


def pending_secrets(name: str) -> dict[str, Any]:
    """The arguments of a ``rotate_credentials`` step (to be sealed with the current key)."""
    token = (
        AgentCredential.objects.filter(name=name)
        .values_list("pending_encrypted", flat=True)
        .first()
    )
    if not token:
        return {}
    pending = crypto.decrypt_json(token)
    return {"password": pending["password"], "seal_secret": pending["seal"]}


def finish_rotation(name: str) -> None:
    """The agent keeps the new credentials: so does the console, and the old password is gone."""
    credential = AgentCredential.objects.select_for_update().filter(name=name).first()
    if credential is None or not credential.pending_sha256:
        return
    pending = crypto.decrypt_json(credential.pending_encrypted)
    credential.password_sha256 = credential.pending_sha256
    credential.seal_key_encrypted = crypto.encrypt_json({"key": pending["seal"]})
    credential.pending_sha256, credential.pending_encrypted = "", ""
    credential.save()
    try:
        broker.ensure_user(_redis(), name, credential.password_sha256)
    except Exception as exc:  # the drainer re-creates the user from the stored hash
        log.warning("could not reset the Redis user of %s now: %s", name, exc)


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


@on_step_success("rotate_credentials")
def _rotated(step: Any, data: dict[str, Any]) -> None:
    if step.host is not None:
        finish_rotation(step.host.name)
