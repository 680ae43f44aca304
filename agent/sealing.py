"""Secret command arguments sealed for one agent: Fernet with that agent's own key.

The console (jobs.services) moves every secret argument of a command (``names.is_secret``:
a fence device's password, Kg key, passwd_script, ...) into one token::

    args["sealed"] = seal(key, host, command_id, {"params": {"password": "..."}})

so the broker (queue, kombu's unacked hash, an RDB or AOF file) never holds them in clear. The
agent, which alone has ``key`` (written by the bootstrap into its 0600 env file), opens the
token and merges it back (``params`` into ``args["params"]``, anything else into ``args``).
A token is refused when it is for another host or another command, older than ``TTL_S``, or
made with another key; the command then fails with ``bad_request`` and runs nothing.
"""

from __future__ import annotations

import json
from typing import Any

from agent.protocol import SEALED_ARG, Command, ProtocolError

TTL_S = 3600


def _fernet(key: str) -> Any:
    from cryptography.fernet import Fernet

    return Fernet(key.encode())


def seal(key: str, host: str, command_id: str, secret_args: dict[str, Any]) -> str:
    payload = {"host": host, "id": command_id, "args": secret_args}
    token: bytes = _fernet(key).encrypt(json.dumps(payload, sort_keys=True).encode())
    return token.decode()


def open_sealed(key: str | None, host: str, command: Command) -> Command:
    """The command with its sealed arguments merged back; ProtocolError if they cannot be."""
    token = command.args.get(SEALED_ARG)
    if token is None:
        return command
    if not key:
        raise ProtocolError("bad_request", "sealed arguments, but this agent has no sealing key")
    from cryptography.fernet import InvalidToken

    try:
        payload = json.loads(_fernet(key).decrypt(str(token).encode(), ttl=TTL_S))
    except (InvalidToken, ValueError, TypeError):
        raise ProtocolError(
            "bad_request", "the sealed arguments cannot be opened (another key, or too old)"
        ) from None
    if payload.get("host") != host or payload.get("id") != command.id:
        raise ProtocolError("bad_request", "the sealed arguments are for another command")
    secret = payload.get("args")
    if not isinstance(secret, dict):
        raise ProtocolError("bad_request", "the sealed arguments are not an object")
    args = {k: v for k, v in command.args.items() if k != SEALED_ARG}
    for name, value in secret.items():
        if name == "params" and isinstance(value, dict):
            args["params"] = {**(args.get("params") or {}), **value}
        else:
            args[name] = value
    return Command(id=command.id, kind=command.kind, args=args, v=command.v)
