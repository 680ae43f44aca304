"""State tables: every host and service state, what it means, and which changes are legal.

The engine changes a state only through its one transition function (in `tick.py`), which
checks these tables and logs every change, so a trace reads like "guest1: started -> fence".
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class HostState(StrEnum):
    """What the engine believes about a host."""

    ONLINE = "online"  # heartbeating and usable
    MAINTENANCE = "maintenance"  # heartbeating but being drained (maintenance or clean shutdown)
    UNREACHABLE = "unreachable"  # silent while guests that must be recovered may still run there
    FENCING = "fencing"  # a Fence action is in flight
    FENCED = "fenced"  # confirmed off by its fence device or by a person
    OFFLINE = "offline"  # silent with nothing to recover, or never heard from


class ServiceState(StrEnum):
    """What the engine believes about a service (a guest it keeps running)."""

    STOPPED = "stopped"  # not running and not asked to run
    DISABLED = "disabled"  # disabled by a person or by the `disable` recovery policy
    STARTING = "starting"  # a Start is in flight
    STARTED = "started"  # running on `node`
    STOPPING = "stopping"  # a Stop is in flight
    MIGRATING = "migrating"  # a live migration node -> target is in flight
    RELOCATING = "relocating"  # a stop-and-start move node -> target is in flight
    FENCE = "fence"  # its host went silent: waiting for that host to be fenced
    RECOVERING = "recovering"  # stopped without being asked: about to start again
    WAITING = "waiting"  # wants to run but no allowed host can take it now
    FAILED = "failed"  # gave up after max_relocations; a person must enable or disable it


class Desired(StrEnum):
    """What a person wants for a service."""

    STARTED = "started"
    STOPPED = "stopped"
    DISABLED = "disabled"


class Recovery(StrEnum):
    """What to do when a guest stops without being asked (crash, failed start)."""

    RESTART = "restart"  # restart in place up to max_restarts in restart_window_s, then relocate
    RELOCATE = "relocate"  # start on another host at once
    DISABLE = "disable"  # leave it stopped and disabled


HOST_STATES: Mapping[HostState, str] = {
    HostState.ONLINE: "Heartbeating and usable: runs guests and may take new ones.",
    HostState.MAINTENANCE: (
        "Heartbeating, but a person asked for maintenance or the host is shutting down "
        "cleanly: takes no new guests, and its guests leave by live migration."
    ),
    HostState.UNREACHABLE: (
        "Missed its heartbeats while guests that must be recovered ran there. They may still "
        "be running, so nothing of it starts elsewhere until the host is fenced or a person "
        "acknowledges it is down. Fencing is retried with backoff; the reason says what it "
        "waits for (a fence retry, a missing fence device, a fencing storm)."
    ),
    HostState.FENCING: "A Fence action is in flight.",
    HostState.FENCED: (
        "Confirmed off, by its fence device or by a person; its guests may start elsewhere. "
        "Becomes online again when it heartbeats."
    ),
    HostState.OFFLINE: (
        "Silent with no guests to recover (or never heard from): not fenced and not used."
    ),
}

SERVICE_STATES: Mapping[ServiceState, str] = {
    ServiceState.STOPPED: "Not running, and nobody asked for it to run.",
    ServiceState.DISABLED: (
        "Disabled by a person or by the `disable` recovery policy: never started until enabled."
    ),
    ServiceState.STARTING: "A Start on `node` is in flight.",
    ServiceState.STARTED: "Running on `node`.",
    ServiceState.STOPPING: (
        "A Stop on `node` is in flight (asked by a person; or to make room for a more "
        "important guest, in which case it waits afterwards, saved when it can be; or a "
        "destroy of a guest that failed a health check, which its recovery policy follows)."
    ),
    ServiceState.MIGRATING: (
        "A live migration from `node` to `target` is in flight; if it fails the guest keeps "
        "running on `node`."
    ),
    ServiceState.RELOCATING: "A stop on `node` then start on `target` is in flight.",
    ServiceState.FENCE: (
        "Its host went silent: the guest may still run there, so it waits until every host in "
        "`suspects` is fenced or acknowledged down (or comes back and reports it)."
    ),
    ServiceState.RECOVERING: (
        "It stopped without being asked (crash, failed start, fenced host); the recovery policy "
        "picks where it starts next (`restart_on` for a restart in place)."
    ),
    ServiceState.WAITING: (
        "Wants to run but no allowed host can take it now: its restricted domain has no member "
        "online, no host has room, or it was stopped to make room for a more important guest."
    ),
    ServiceState.FAILED: (
        "Failed on max_relocations + 1 hosts in a row; stays stopped until a person disables or "
        "enables it."
    ),
}

_H = HostState
_S = ServiceState

#: States a host may take when the engine first sees it.
NEW_HOST_STATES: frozenset[HostState] = frozenset({_H.ONLINE, _H.MAINTENANCE, _H.OFFLINE})

HOST_TRANSITIONS: Mapping[HostState, frozenset[HostState]] = {
    _H.ONLINE: frozenset({_H.MAINTENANCE, _H.UNREACHABLE, _H.OFFLINE}),
    _H.MAINTENANCE: frozenset({_H.ONLINE, _H.UNREACHABLE, _H.OFFLINE}),
    _H.UNREACHABLE: frozenset({_H.FENCING, _H.FENCED, _H.ONLINE, _H.MAINTENANCE, _H.OFFLINE}),
    _H.FENCING: frozenset({_H.FENCED, _H.UNREACHABLE}),
    _H.FENCED: frozenset({_H.ONLINE, _H.MAINTENANCE}),
    _H.OFFLINE: frozenset({_H.ONLINE, _H.MAINTENANCE, _H.UNREACHABLE}),
}

#: States a service may take when the engine first sees it.
NEW_SERVICE_STATES: frozenset[ServiceState] = frozenset({_S.STOPPED, _S.DISABLED, _S.STARTED})

SERVICE_TRANSITIONS: Mapping[ServiceState, frozenset[ServiceState]] = {
    _S.STOPPED: frozenset({_S.STARTING, _S.WAITING, _S.DISABLED, _S.STARTED, _S.FENCE}),
    _S.DISABLED: frozenset({_S.STARTING, _S.WAITING, _S.STOPPED, _S.FENCE}),
    _S.STARTING: frozenset(
        {_S.STARTED, _S.RECOVERING, _S.FAILED, _S.DISABLED, _S.FENCE, _S.STOPPED}
    ),
    _S.STARTED: frozenset(
        {
            _S.STOPPING,
            _S.MIGRATING,
            _S.RELOCATING,
            _S.RECOVERING,
            _S.FENCE,
            _S.FAILED,
            _S.DISABLED,
            _S.STOPPED,
        }
    ),
    # recovering / failed: a guest destroyed because it failed a health check
    _S.STOPPING: frozenset(
        {_S.STOPPED, _S.DISABLED, _S.WAITING, _S.STARTED, _S.FENCE, _S.RECOVERING, _S.FAILED}
    ),
    # recovering / failed: the result of a migration was lost and neither host runs it
    _S.MIGRATING: frozenset(
        {_S.STARTED, _S.FENCE, _S.STOPPED, _S.DISABLED, _S.RECOVERING, _S.FAILED}
    ),
    _S.RELOCATING: frozenset(
        {_S.STARTED, _S.RECOVERING, _S.FAILED, _S.DISABLED, _S.FENCE, _S.STOPPED}
    ),
    _S.FENCE: frozenset({_S.RECOVERING, _S.STARTED, _S.STOPPED, _S.DISABLED}),
    _S.RECOVERING: frozenset(
        {_S.STARTING, _S.WAITING, _S.STOPPED, _S.DISABLED, _S.FAILED, _S.STARTED, _S.FENCE}
    ),
    _S.WAITING: frozenset({_S.STARTING, _S.STOPPED, _S.DISABLED, _S.STARTED, _S.FENCE}),
    _S.FAILED: frozenset({_S.DISABLED, _S.STOPPED}),
}
