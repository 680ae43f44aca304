"""The fencing driver: runs any standard `fence_*` agent the way every cluster manager does.

The agent gets no arguments and reads `key=value` lines on stdin (`action=`, `plug=`, `ip=`,
`username=`, `password=`, ...). Exit codes: 0 = success (for status: power is on), 2 = power is
off (status), anything else = error. Credentials travel on stdin only, so they never appear in a
process list; they are scrubbed from any output we keep and never logged.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from agent import names
from agent.errors import AgentError
from agent.protocol import FenceArgs
from agent.runner import Runner

log = logging.getLogger(__name__)

DEFAULT_SEARCH_PATH = (Path("/usr/sbin"), Path("/usr/bin"), Path("/usr/local/sbin"))
ACTIONS = ("on", "off", "reboot", "status", "monitor", "list", "list-status", "validate-all")
EXIT_OK, EXIT_ERROR, EXIT_OFF = 0, 1, 2


def scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class Fencing(Protocol):
    def fence(self, command: FenceArgs) -> dict[str, Any]: ...
    def metadata(self, agent: str) -> dict[str, Any]: ...


def parse_metadata(xml: str) -> dict[str, Any]:
    """A fence agent's `-o metadata` XML as a parameter list for the console's forms."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise AgentError("command_failed", f"fence agent metadata is not XML: {exc}") from exc
    params = [_parameter(p) for p in root.iterfind("parameters/parameter")]
    return {
        "name": root.get("name"),
        "shortdesc": root.get("shortdesc"),
        "longdesc": (root.findtext("longdesc") or "").strip(),
        "actions": [a.get("name") for a in root.iterfind("actions/action")],
        "parameters": params,
    }


def _parameter(p: ET.Element) -> dict[str, Any]:
    content = p.find("content")
    name = p.get("name", "")
    return {
        "name": name,
        "type": content.get("type", "string") if content is not None else "string",
        "required": p.get("required") == "1",
        "default": content.get("default") if content is not None else None,
        "choices": [o.get("value") for o in content.iterfind("option")]
        if content is not None
        else [],
        "description": (p.findtext("shortdesc") or "").strip(),
        "secret": names.is_secret(name),
        "deprecated": p.get("deprecated") == "1" or p.get("obsoletes") is not None,
    }


class FenceAgents:
    """The real fencing driver: finds `fence_*` programs on a search path and runs them."""

    def __init__(self, runner: Runner, search_path: Sequence[Path] = DEFAULT_SEARCH_PATH) -> None:
        self._runner = runner
        self._search_path = list(search_path)

    def _find(self, agent: str) -> str:
        names.fence_agent(agent)
        for directory in self._search_path:
            path = directory / agent
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
        where = ":".join(str(d) for d in self._search_path)
        raise AgentError("not_found", f"fence agent {agent} not found in {where}")

    def fence(self, command: FenceArgs) -> dict[str, Any]:
        """Run the agent. `require_power` ("off" or "on", with status/monitor only): the query
        succeeds only when the device reports that power state (the console asks "is it off?"
        after a fence whose result was lost), else it fails with the state found."""
        agent, action, require_power = command.agent, command.action, command.require_power
        if action not in ACTIONS:
            raise AgentError("bad_request", f"fence action must be one of {ACTIONS}")
        if require_power is not None and (
            require_power not in ("on", "off") or action not in ("status", "monitor")
        ):
            raise AgentError(
                "bad_request", "require_power is 'on' or 'off', with action status or monitor"
            )
        lines = {"action": action}
        for key, value in command.params.items():
            names.fence_key(key)
            if key in ("action", "option"):  # 'option' is the old name of 'action'
                raise AgentError("bad_request", "give the action as 'action', not in params")
            lines[key] = names.fence_value(key, value)
        secrets = [v for k, v in lines.items() if names.is_secret(k)]
        path = self._find(agent)
        stdin = "".join(f"{k}={v}\n" for k, v in lines.items())
        log.info("fence %s action=%s plug=%s", agent, action, lines.get("plug", "-"))
        try:
            done = self._runner.run(
                [path], timeout_s=command.timeout_s, input_text=stdin, check=False
            )
        except AgentError as exc:
            exc.message = scrub(exc.message, secrets)
            raise
        output = scrub(done.stdout.strip(), secrets)
        stderr = scrub(done.stderr.strip(), secrets)
        if done.returncode not in (EXIT_OK, EXIT_OFF):
            raise AgentError(
                "command_failed",
                f"{agent} action={action} failed (exit {done.returncode}): {stderr[-500:]}",
                command=[path],
                stderr=stderr,
                exit_code=done.returncode,
            )
        power = "off" if done.returncode == EXIT_OFF else "on"
        if require_power is not None and power != require_power:
            raise AgentError(
                "power_state", f"{agent} status: the host is {power}, not {require_power}"
            )
        return {
            "agent": agent,
            "action": action,
            "outcome": "off" if done.returncode == EXIT_OFF else "ok",
            "exit_code": done.returncode,
            "power": power if action in ("status", "monitor") else None,
            "output": output,
            "duration_s": round(done.duration_s, 3),
        }

    def metadata(self, agent: str) -> dict[str, Any]:
        path = self._find(agent)
        return parse_metadata(self._runner.run([path, "-o", "metadata"], timeout_s=30).stdout)
