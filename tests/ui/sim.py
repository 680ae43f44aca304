"""Simulated agents for the browser tests, inside the test process.

The lab's real agents are not part of these tests (they need the whole runtime: a console
Celery worker, beat, agents installed by the SSH bootstrap). Instead, this plays every
host's agent the way the protocol says, and the real console code does the rest: commands
leave through the job dispatcher (a transport that hands them here), results and heartbeats
come back through ``ingest.handle``, and the real HA runner (``runner.run_all``) decides.

What is simulated, and how:
- bootstrap steps succeed (the fake bootstrap creates the job); a host heartbeats once its
  ``bootstrap.register`` step succeeded;
- guests: ``define``/``start``/``shutdown``/``destroy``/``migrate`` move names between hosts;
- storage: a small in-memory LVM on two loop devices per host; ``vgcreate`` without
  ``local`` answers "clustered locking unavailable" (no lvmlockd here, as on this machine);
  ``mount`` of gfs2 fails exactly as the agent does when ``gfs2`` is not in this machine's
  ``/proc/filesystems`` (checked for real), else succeeds;
- ``fence_metadata``/``fence``: canned answers.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
import urllib.parse
from pathlib import Path
from typing import Any

from django.db import close_old_connections

from console.clusters.models import Host
from console.runtime import ingest, runner
from console.runtime.store import Store

log = logging.getLogger("haven.ui-sim")
MIB = 1024 * 1024
KERNEL_HAS_GFS2 = "gfs2" in Path("/proc/filesystems").read_text().split()


class SimAgents:
    """A transport (``send``) plus a thread that answers, heartbeats and runs the runner."""

    def __init__(self, store: Store, period_s: float = 0.25) -> None:
        self.store = store
        self.period_s = period_s
        self.inbox: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.alive: set[str] = set()
        self.running: dict[str, set[str]] = {}
        self.vgs: dict[str, dict[str, Any]] = {}
        self.lvs: dict[tuple[str, str], int] = {}
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.errors: list[str] = []
        #: seconds a command kind takes (its result is sent that much later)
        self.delays: dict[str, float] = {"migrate": 2.5}
        #: (host, kind) -> error message: that step fails with it
        self.fail_steps: dict[tuple[str, str], str] = {}
        self._due: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sim-agents", daemon=True)

    # transport -------------------------------------------------------------------------
    def send(self, host: str, command: dict[str, Any], redacted: dict[str, Any]) -> None:
        self.sent.append((host, redacted))
        self.inbox.put((host, command))

    # life ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._round()
            except Exception:  # keep playing; the test sees the error list
                self.errors.append(traceback.format_exc())
                log.exception("simulated agents")
            finally:
                close_old_connections()
            self._stop.wait(self.period_s)

    def _round(self) -> None:
        for _ in range(self.inbox.qsize()):
            try:
                host, command = self.inbox.get_nowait()
            except queue.Empty:
                break
            self._answer(host, command)
        t = time.time()
        for host in sorted(self.alive):
            ingest.handle(self._heartbeat(host, t), self.store, received=t, sender=host)
        runner.run_all(self.store)

    def _heartbeat(self, host: str, t: float) -> dict[str, Any]:
        return {
            "v": 2,
            "kind": "heartbeat",
            "host": host,
            "ts": t,
            "seq": int(t),
            "interval_s": 1.0,
            "libvirt_connected": True,
            "agent_version": "sim",
            "host_uuid": f"uuid-{host}",
            "cpus": 2,
            "memory_total_mib": 4096,
            "memory_free_mib": 4096 - 32 * len(self.running.get(host, ())),
            "guests": [
                {"name": g, "uuid": f"u-{g}", "state": "running"}
                for g in sorted(self.running.get(host, ()))
            ],
        }

    def _answer(self, host: str, command: dict[str, Any]) -> None:
        delay = self.delays.get(command["kind"], 0.0)
        if delay and command["id"] not in self._due:
            self._due[command["id"]] = time.time() + delay
        if time.time() < self._due.get(command["id"], 0.0):
            self.inbox.put((host, command))  # not yet: a slow command (a live migration)
            return
        failure = self.fail_steps.get((host, command["kind"]))
        try:
            if failure:
                raise SimError("command_failed", failure)
            data = self._do(host, command["kind"], command.get("args") or {})
            ok, error = True, None
        except SimError as exc:
            ok, data, error = False, {}, {"code": exc.code, "message": str(exc)}
        ingest.handle(
            {
                "v": 2,
                "kind": "result",
                "host": host,
                "ts": time.time(),
                "id": command["id"],
                "command": command["kind"],
                "ok": ok,
                "data": data,
                "error": error,
                "duration_s": 0.01,
            },
            self.store,
            sender=host,
        )

    # commands --------------------------------------------------------------------------
    def _do(self, host: str, kind: str, a: dict[str, Any]) -> dict[str, Any]:
        guests = self.running.setdefault(host, set())
        if kind.startswith("bootstrap."):
            if kind == "bootstrap.register":
                self.alive.add(host)
            return {}
        if kind == "define":
            return {"name": "", "uuid": "", "state": "shutoff"}
        if kind == "start":
            guests.add(a["guest"])
            return {"name": a["guest"], "uuid": "", "state": "running", "changed": True}
        if kind in ("shutdown", "destroy"):
            guests.discard(a["guest"])
            return {"name": a["guest"], "uuid": "", "state": "shutoff", "how": "shutdown"}
        if kind == "migrate":
            address = urllib.parse.urlparse(a["dest_uri"]).hostname
            target = Host.objects.get(address=address).name
            guests.discard(a["guest"])
            self.running.setdefault(target, set()).add(a["guest"])
            return {
                "duration_s": 0.5,
                "downtime_ms": 9,
                "dest_uri": a["dest_uri"],
                "name": a["guest"],
            }
        if kind == "list_guests":
            return {"guests": [{"name": g, "uuid": "", "state": "running"} for g in sorted(guests)]}
        if kind == "storage_probe":
            return self._probe(host)
        if kind == "pvcreate":
            return {"device": a["device"]}
        if kind == "vgcreate":
            if not a.get("local"):
                raise SimError(
                    "clustered_locking_unavailable",
                    "clustered locking unavailable: lvmlockd is not running on this host, so a "
                    "shared VG cannot be created; pass local=true for a host-local VG",
                )
            self.vgs[a["vg"]] = {"devices": list(a["devices"]), "host": host}
            return {"vg": a["vg"], "shared": False}
        if kind in ("lvcreate", "lvextend"):
            self.lvs[(a["vg"], a["lv"])] = int(a["size_bytes"])
            return {"vg": a["vg"], "lv": a["lv"], "size_bytes": int(a["size_bytes"])}
        if kind == "mkfs_gfs2":
            table = f"{a['cluster']}:{a['fs']}"
            return {"device": a["device"], "lock_table": table, "journals": a.get("journals", 2)}
        if kind == "fstab_entry":
            return {"line": f"{a['device']}\t{a['mount_point']}\tgfs2", "changed": True}
        if kind == "mount":
            if not KERNEL_HAS_GFS2:
                raise SimError(
                    "not_supported", "the kernel lacks 'gfs2' (not in /proc/filesystems)"
                )
            return {"mount_point": a["mount_point"], "changed": True}
        if kind == "fence_metadata":
            return FENCE_METADATA
        if kind == "fence":
            return {"outcome": "ok", "exit_code": 0, "power": "on", "output": "Status: ON"}
        raise SimError("unknown_command", f"unknown command kind {kind!r}")

    def _probe(self, host: str) -> dict[str, Any]:
        devices = [f"/dev/loop{n}" for n in (3, 4)]
        vg_of = {d: name for name, vg in self.vgs.items() for d in vg["devices"]}
        vgs = []
        for name, vg in self.vgs.items():
            size = 256 * MIB * len(vg["devices"]) - 4 * MIB * len(vg["devices"])
            used = sum(s for (v, _), s in self.lvs.items() if v == name)
            vgs.append(
                {"vg_name": name, "vg_size": size, "vg_free": size - used, "vg_lock_type": ""}
            )
        return {
            "blockdevices": [
                {"name": d[5:], "path": d, "size": 256 * MIB, "type": "loop"} for d in devices
            ],
            "pvs": [{"pv_name": d, "vg_name": vg_of.get(d, "")} for d in devices],
            "vgs": vgs,
            "lvs": [
                {"lv_name": lv, "vg_name": vg, "lv_size": size}
                for (vg, lv), size in self.lvs.items()
            ],
        }


class SimError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


FENCE_METADATA = {
    "name": "fence_haven_lab",
    "shortdesc": "Fence agent for Haven's lab hosts (powers a lab host off and on)",
    "actions": ["on", "off", "reboot", "status", "list", "monitor", "metadata"],
    "parameters": [
        {"name": "action", "type": "string", "required": False, "default": "reboot"},
        {"name": "plug", "type": "string", "required": True, "description": "Lab host name"},
        {
            "name": "lab_root",
            "type": "string",
            "required": False,
            "default": "var/lab",
            "description": "State directory of the lab",
        },
        {
            "name": "password",
            "type": "string",
            "required": False,
            "secret": True,
            "description": "Not used by the lab agent; shows how secrets are kept",
        },
    ],
}
