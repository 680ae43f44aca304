"""The host's cluster stack as the agent sees it: corosync membership and quorum, dlm state.

Parsed from the tools' own output (no Python bindings exist): ``corosync-quorumtool -s -p``
and ``dlm_tool status``. The heartbeat carries ``membership()`` as its optional ``cluster``
field; the console's bootstrap (console/bootstrap/cluster_stack.py) uses the same parsers.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

from agent.errors import AgentError
from agent.runner import Runner

SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"
QUORUMTOOL = ["corosync-quorumtool", "-s", "-p"]
_DLM_NODE_RE = re.compile(r"^node (\d+) (\S+)")
_FIELDS = ("Nodes", "Node ID", "Expected votes", "Total votes", "Quorum", "Ring ID")


def parse_quorumtool(stdout: str) -> dict[str, Any]:
    """``corosync-quorumtool -s -p``: quorate, this node's id, counts and the members."""
    out: dict[str, Any] = {"quorate": False, "nodes": []}
    in_members = False
    for line in stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "Quorate":
            out["quorate"] = value.strip().lower().startswith("yes")
        elif sep and key.strip() in _FIELDS:
            name = key.strip().lower().replace(" ", "_")
            name = "nodes_count" if name == "nodes" else name  # "nodes" is the member list
            digits = re.match(r"\s*(\d+)\b", value)
            out[name] = int(digits.group(1)) if digits and name != "ring_id" else value.strip()
        if line.strip().startswith("Nodeid"):
            in_members = True
            continue
        parts = line.split()
        if in_members and len(parts) >= 3 and parts[0].isdigit() and parts[1].isdigit():
            # "1  1  NR sv1 (local)": with -p a Qdevice column sits before the name
            rest = [p for p in parts[2:] if p != "(local)"]
            out["nodes"].append({"nodeid": int(parts[0]), "votes": int(parts[1]), "name": rest[-1]})
    return out


def parse_dlm_status(stdout: str) -> dict[int, str]:
    """``dlm_tool status``: node id -> state (``M`` member, ``X`` gone, ...)."""
    nodes: dict[int, str] = {}
    for line in stdout.splitlines():
        m = _DLM_NODE_RE.match(line.strip())
        if m:
            nodes[int(m.group(1))] = m.group(2)
    return nodes


def _walk(conf: str) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    """Each line of corosync.conf (as Haven's bootstrap writes it: every ``{`` ends its line,
    every ``}`` stands alone), with its text (no comment) and the sections it is in, its own
    included: ``node {``, its ``name: x`` and its ``}`` are all in ("nodelist", "node")."""
    path: list[str] = []
    for line in conf.splitlines(keepends=True):
        text = line.split("#", 1)[0].strip()
        if text.endswith("{"):
            path.append(text[:-1].strip())
        yield line, text, tuple(path)
        if text == "}" and path:
            path.pop()


_NODE = ("nodelist", "node")


def _item(text: str) -> tuple[str, str] | None:
    """A ``key: value`` line as (key, value); None for a section's ``{`` or ``}``."""
    key, sep, value = text.partition(":")
    return (key.strip(), value.strip()) if sep and not text.endswith("{") else None


def without_node(conf: str, name: str) -> str | None:
    """corosync.conf without the ``node { ... }`` block of the nodelist whose ``name:`` is
    ``name``; None when there is no such node. Everything else stays as it was, byte for
    byte."""
    out: list[str] = []
    block: list[str] = []
    names_in: list[str] = []
    found = False
    for line, text, path in _walk(conf):
        if path[:2] != _NODE:
            out.append(line)
            continue
        block.append(line)
        if (item := _item(text)) is not None and item[0] == "name" and len(path) == 2:
            names_in.append(item[1])
        if text == "}" and len(path) == 2:  # the node block closes
            if names_in == [name]:
                found = True
            else:
                out.extend(block)
            block, names_in = [], []
    return "".join(out) if found else None


def parse_nodelist(conf: str) -> list[dict[str, str]]:
    """The ``node { ... }`` blocks of corosync.conf's nodelist, each as its ``key: value``
    lines (``nodeid``, ``name``, ``ring0_addr``), in file order."""
    out: list[dict[str, str]] = []
    for _, text, path in _walk(conf):
        if path == _NODE:
            if text.endswith("{"):
                out.append({})
            elif (item := _item(text)) is not None:
                out[-1][item[0]] = item[1]
    return out


def with_nodes(conf: str, nodes: list[tuple[int, str, str]]) -> str | None:
    """corosync.conf (as Haven's bootstrap writes it) with a ``node`` block for each (node id,
    name, address) not yet in its nodelist, added at the nodelist's end; ``two_node: 1`` goes
    once there are more than two nodes. None when every node is there already. ValueError
    when a name, id or address is already used by another node (nothing is changed)."""
    have = parse_nodelist(conf)
    add = []
    for nodeid, name, address in nodes:
        same = [n for n in have if n.get("name") == name]
        if same:
            if same[0].get("nodeid") != str(nodeid) or same[0].get("ring0_addr") != address:
                raise ValueError(
                    f"{name} is already in the nodelist as node {same[0].get('nodeid')} at "
                    f"{same[0].get('ring0_addr')}, not node {nodeid} at {address}"
                )
            continue
        for n in have:
            if n.get("nodeid") == str(nodeid) or n.get("ring0_addr") == address:
                raise ValueError(
                    f"node id {nodeid} or address {address} of {name} is already used by "
                    f"{n.get('name')} (node {n.get('nodeid')} at {n.get('ring0_addr')})"
                )
        add.append((nodeid, name, address))
    if not add:
        return None
    blocks = "".join(
        f"    node {{\n        ring0_addr: {address}\n        name: {name}\n"
        f"        nodeid: {nodeid}\n    }}\n"
        for nodeid, name, address in add
    )
    out: list[str] = []
    done = False
    for line, text, path in _walk(conf):
        if text == "}" and path == ("nodelist",) and not done:
            out.append(blocks)  # at the nodelist's end
            done = True
        elif path == ("quorum",) and re.match(r"^two_node\s*:", text):
            if len(have) + len(add) > 2:
                continue  # three or more votes: a majority, no two-node special case
        out.append(line)
    if not done:
        raise ValueError("corosync.conf has no nodelist section")
    return "".join(out)


class ClusterStack:
    """Membership and quorum for the heartbeat, read at most every ``min_interval_s``."""

    def __init__(self, runner: Runner, min_interval_s: float = 5.0) -> None:
        self._run = runner.run
        self._min_interval_s = min_interval_s
        self._last: dict[str, Any] | None = None
        self._at = -1e9

    def membership(self) -> dict[str, Any] | None:
        """None when corosync is not installed here; else its state (``running`` false when it
        is installed but not answering, with the tool's words in ``error``)."""
        now = time.monotonic()
        if now - self._at < self._min_interval_s:
            return self._last
        self._at = now
        if shutil.which("corosync-quorumtool", path=SBIN) is None:
            self._last = None
            return None
        try:
            done = self._run(QUORUMTOOL, timeout_s=10.0, check=False)
        except AgentError as exc:
            self._last = {"running": False, "quorate": False, "nodes": [], "error": exc.message}
            return self._last
        if done.returncode not in (0, 2):  # 2 = not quorate, still a full report
            words = (done.stderr.strip() or done.stdout.strip() or "").splitlines()[-1:]
            self._last = {"running": False, "quorate": False, "nodes": [],
                          "error": words[0] if words else f"exit {done.returncode}"}  # fmt: skip
            return self._last
        self._last = {"running": True, **parse_quorumtool(done.stdout)}
        return self._last
