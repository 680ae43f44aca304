"""The agents' Redis users: exactly the commands and the exact keys one agent needs.

An agent does two things with Redis (agent/protocol.py):

- it RPUSHes its messages onto ``haven:in:<host>``: write-only, that one key;
- it consumes its command queue ``agent.<host>`` with kombu's Redis transport (ack
  emulation): BRPOP on the queue's list (one list: the agent sets ``priority_steps=[0]``), the
  unacknowledged messages in ``haven.agent.<host>.unacked`` (hash) and ``.unacked_index``
  (sorted set), kombu's restore mutex ``.unacked_mutex`` (redis-py's lock: SET NX PX, released
  by a Lua script through EVALSHA), the queue's binding set ``_kombu.binding.agent.<host>``
  and ``_kombu.binding_permanent.agent.<host>`` (SADD when the worker declares its queue,
  SMEMBERS to restore a message), and MULTI/EXEC/
  WATCH for its transactions.

Every key is named exactly (no pattern: host names hold no glob characters, and ``agent.h1``
never matches ``agent.h1.dc2``). No SCAN/KEYS, no DEL/EXPIRE on any key but the agent's own
mutex, nothing of the console's (``console``, ``haven:hb``, another host's keys). The rights
are split in ACL selectors so that each command reaches only the keys it needs.

The password is never stored: Redis takes its SHA-256 (``#<hex>``), and so does the console
(console/ha/models.py ``AgentCredential``), which re-creates every missing user from it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from agent.protocol import broker_keys

USER_PREFIX = "haven-agent-"


def agent_redis_user(host: str) -> str:
    return f"{USER_PREFIX}{host}"


def password_hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def agent_keys(host: str) -> dict[str, str]:
    """Every key one agent touches, by role (agent/protocol.py ``broker_keys``)."""
    return broker_keys(host)


def agent_acl_rules(host: str, sha256_hex: str) -> list[str]:
    """``ACL SETUSER haven-agent-<host> <rules>``: see the module docstring."""
    k = agent_keys(host)
    return [
        "reset",
        "on",
        f"#{sha256_hex}",
        "resetchannels",
        "-@all",
        # no keys: connection upkeep and transactions; SELECT for a broker URL's database
        # (the keys below are the only ones it reaches, in any database)
        "+ping",
        "+select",
        "+multi",
        "+exec",
        "+discard",
        "+unwatch",
        # its messages: write-only, one key
        f"%W~{k['inbound']}",
        "+rpush",
        # its queue: take commands, put back unacknowledged ones
        f"(~{k['queue']} +brpop +lpush +rpush +llen)",
        # kombu's ack emulation
        f"(~{k['unacked']} ~{k['unacked_index']} +hset +hget +hdel +zadd +zrem +zrange +watch)",
        f"(~{k['unacked_mutex']} +set +get +del +evalsha +eval +script|load)",
        f"(~{k['binding']} ~{k['binding_permanent']} +sadd +smembers)",
    ]


def ensure_user(r: Any, host: str, sha256_hex: str) -> None:
    """Create or reset the agent's user (idempotent)."""
    r.execute_command("ACL", "SETUSER", agent_redis_user(host), *agent_acl_rules(host, sha256_hex))


def delete_user(r: Any, host: str) -> None:
    r.execute_command("ACL", "DELUSER", agent_redis_user(host))
