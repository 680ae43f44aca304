"""Haven's HA engine: pure decisions, standard library only.

    decision = tick(snapshot, now)

`snapshot` (a frozen `Snapshot`) holds what the console knows: host observations (last
heartbeat, reported guests, memory, maintenance / shutting-down flags, fence device configured,
acknowledged-down time), failover domains, service configurations, results of earlier actions
(keyed by action id), new person's commands (with ids), the settings and the engine's previous
`Status`. `now` is the time on the heartbeat clock, in seconds.

`decision.status` is the new status to store (`Status.to_json()` / `Status.from_json()` for one
database column) and pass back in the next snapshot; `decision.actions` are `Fence`,
`FenceStatus`, `Start`, `Stop`, `Migrate` and `Relocate`, each with a fresh id, to turn into
jobs; `decision.replies` answer commands (accepted, queued, refused with a code and a
reason); `decision.log` and `decision.transitions` say what changed and why.

See README.md beside this file for the states and how the console runtime drives `tick`.
"""

from console.engine import model
from console.engine.admission import Capacity
from console.engine.commands import Command, CommandKind
from console.engine.model import *  # noqa: F403 (its __all__)
from console.engine.rebalance import Outlook as RebalanceOutlook
from console.engine.rebalance import Stance as RebalanceStance
from console.engine.settings import Settings
from console.engine.states import (
    HOST_STATES,
    SERVICE_STATES,
    Desired,
    HostState,
    Recovery,
    ServiceState,
)
from console.engine.status import HostStatus, PendingKind, ServiceStatus, Status
from console.engine.tick import Rulebook, best_host, move_refusal, tick

__all__ = [
    *model.__all__,
    "HOST_STATES",
    "SERVICE_STATES",
    "Capacity",
    "Command",
    "CommandKind",
    "Desired",
    "HostState",
    "HostStatus",
    "PendingKind",
    "RebalanceOutlook",
    "RebalanceStance",
    "Recovery",
    "Rulebook",
    "ServiceState",
    "ServiceStatus",
    "Settings",
    "Status",
    "best_host",
    "move_refusal",
    "tick",
]
