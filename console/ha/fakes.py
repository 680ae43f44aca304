"""Simulated agents: every host's agent played in this process, speaking agent/protocol.py.

``FakeAgents`` is a job transport (``send``, console/jobs/transport.py): each command the
console sends is parsed as an ``agent.protocol.Command``, carried out on simulated hosts, and
its ``Result`` fed back through ``ingest`` exactly as the drainer files a message taken off the
host's inbound list (attributed to that host); heartbeats and lifecycle events go the same way.
The real console does the rest: jobs, the ingest, the store, the HA runner.

It is what the tests, the UI's browser tests, the runtime benchmark (deploy/bench/runtime.py)
and the scenarios through the runtime (tests/console/test_runtime_scenarios.py) run on. Time is
the store's clock unless a time is passed in (virtual time: nothing here sleeps).

What is simulated, and how:

- hosts in ``alive`` heartbeat (``heartbeat``) and answer; a host joins once its
  ``bootstrap.register`` step succeeded or when it is listed at the start; commands sent to a
  host that is not alive are never answered (a dead agent), and the commands queued for a host
  are thrown away when the console drops its queue (``Store.drop_commands``, before a fence);
- guests: ``define`` remembers the guest's memory from its XML, ``start``/``shutdown``/
  ``destroy``/``migrate`` move names between hosts; a heartbeat's free memory is the host's
  total less its running guests' memory;
- ``fence`` powers the host named by ``plug`` off (``fenced``), ``fence`` with action ``status``
  answers its power (and fails when it differs from ``require_power``);
- storage: a small in-memory LVM on two loop devices per host; ``vgcreate`` without ``local``
  answers "clustered locking unavailable" (no lvmlockd), ``mount`` of gfs2 fails when the
  machine's kernel lacks it (``/proc/filesystems``, checked for real);
- faults: ``fail_kinds`` (every command of a kind fails), ``fail_steps`` ((host, kind) ->
  message), ``dead_devices`` (fence devices, by their ``ip``, that never answer),
  ``lose_next`` (the next result of a kind never reaches the console), ``delays``
  (seconds a kind takes before its result is sent).

Subclasses change what a command does by overriding ``do`` (the scenarios' world does).

``FakeRemoteHost``/``FakeRemoteHosts`` play the hosts the SSH bootstrap logs in to
(console/bootstrap/ssh.py ``RemoteHost``), so a bootstrap runs whole without a lab.
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import itertools
import logging
import re
import threading
import traceback
import urllib.parse
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.protocol import Command, ErrorInfo, Event, GuestState, Heartbeat, ProtocolError, Result
from console.ha import ingest
from console.ha.store import Store

log = logging.getLogger("haven.fakes")
MIB = 1024 * 1024
AGENT_VERSION = "fake"


def kernel_has_gfs2() -> bool:
    with contextlib.suppress(OSError):
        return "gfs2" in Path("/proc/filesystems").read_text().split()
    return False


KERNEL_HAS_GFS2 = kernel_has_gfs2()
_MEMORY_RE = re.compile(r"<memory(?:\s+unit=['\"](\w+)['\"])?\s*>\s*(\d+)\s*</memory>")
_NAME_RE = re.compile(r"<name>\s*([^<\s]+)\s*</name>")
_UNIT_MIB = {"KiB": 1 / 1024, "k": 1 / 1024, None: 1 / 1024, "MiB": 1, "M": 1, "GiB": 1024}


def guest_mib(xml: str) -> tuple[str, int]:
    """(name, memory in MiB) of a libvirt domain XML (0 when it names no memory)."""
    name = _NAME_RE.search(xml)
    memory = _MEMORY_RE.search(xml)
    mib = int(int(memory.group(2)) * _UNIT_MIB.get(memory.group(1), 1 / 1024)) if memory else 0
    return (name.group(1) if name else ""), mib


def fake_csr(host: str) -> str:
    """A real certificate request for a new key (dropped at once: the fake host has none)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


class AgentError(Exception):
    """A command failed on the simulated host: ``code`` from agent.protocol.ERROR_CODES."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class FakeAgents:
    """Every host's agent (see the module's docstring); a transport for ``use_transport``."""

    def __init__(
        self,
        store: Store,
        hosts: Iterable[str] = (),
        *,
        memory_total_mib: int = 16384,
        cpus: int = 8,
        period_s: float = 0.25,
        run_runner: Callable[[Store], object] | None = None,
        wake_runner: bool = False,
    ) -> None:
        """``wake_runner``: run a cluster's runner at once when a message wakes it, as the
        drainer does (on the store's clock: leave it off when passing virtual times in)."""
        self.store = store
        self.memory_total_mib, self.cpus, self.period_s = memory_total_mib, cpus, period_s
        self.alive: set[str] = set(hosts)
        self.running: defaultdict[str, set[str]] = defaultdict(set)
        #: memory (MiB) of each guest the console defined
        self.memory: dict[str, int] = {}
        #: every command sent, as the logs show it (secrets redacted)
        self.sent: list[tuple[str, dict[str, Any]]] = []
        #: every command as sent (secret arguments sealed for their host)
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.fenced: list[str] = []
        #: fence status queries: (the host that ran it, its args)
        self.queries: list[tuple[str, dict[str, Any]]] = []
        self.fail_kinds: set[str] = set()
        self.fail_steps: dict[tuple[str, str], str] = {}
        self.lose_next: set[str] = set()
        #: fence devices (their ``ip`` parameter) that fail whatever they are asked
        self.dead_devices: set[str] = set()
        self.delays: dict[str, float] = {}
        self.errors: list[str] = []
        #: each agent's boot id (give a host a new one when it comes back after a shutdown)
        self.boots: dict[str, str] = {}
        #: hosts whose heartbeats report corosync running (the cluster stack under a clustered
        #: VG); none by default: the simulated hosts have no lvmlockd (`vgcreate` says so)
        self.corosync: set[str] = set()
        #: the GFS2 mount points each host's heartbeat reports (a host not here says nothing)
        self.mounts: dict[str, list[str]] = {}
        self.vgs: dict[str, dict[str, Any]] = {}
        self.lvs: dict[tuple[str, str], int] = {}
        self._queue: list[tuple[float, int, str, dict[str, Any]]] = []
        self._seq = itertools.count()
        self._beats = itertools.count(1)
        self._mutex = threading.RLock()
        self._run_runner = run_runner
        self.wake_runner = wake_runner
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if hasattr(store, "on_drop"):  # a MemoryStore: a dropped queue reaches this transport
            store.on_drop = self.drop

    # --- the transport ------------------------------------------------------------------------
    def send(self, host: str, command: dict[str, Any], redacted: dict[str, Any]) -> None:
        delay = self.delays.get(str(command.get("kind")), 0.0)
        # due at the next `answer`, or `delay` seconds (the store's clock) after it was sent
        due = self.store.clock() + delay if delay else -float("inf")
        with self._mutex:
            self.sent.append((host, redacted))
            self.commands.append((host, command))
            heapq.heappush(self._queue, (due, next(self._seq), host, command))

    def drop(self, host: str) -> None:
        """The console emptied the host's queue: what was not taken yet never runs."""
        with self._mutex:
            self._queue = [q for q in self._queue if q[2] != host]
            heapq.heapify(self._queue)

    # --- what the hosts send ------------------------------------------------------------------
    def deliver(self, host: str, message: dict[str, Any], t: float) -> int | None:
        """A message taken off ``host``'s inbound list at ``t``; the cluster to wake, if any."""
        cluster_id = ingest.handle(message, self.store, received=t, sender=host)
        if cluster_id is not None and self.wake_runner:
            from console.ha import runner

            runner.run(cluster_id, self.store)
        return cluster_id

    def heartbeat_of(self, host: str, t: float) -> Heartbeat:
        guests = sorted(self.running.get(host, ()))
        used = sum(self.memory.get(g, 0) for g in guests)
        return Heartbeat(
            host=host,
            agent_version=AGENT_VERSION,
            seq=next(self._beats),
            interval_s=1.0,
            libvirt_connected=True,
            host_uuid=f"uuid-{host}",
            cpus=self.cpus,
            memory_total_mib=self.memory_total_mib,
            memory_free_mib=max(0, self.memory_total_mib - used),
            guests=[GuestState(g, f"u-{g}", "running") for g in guests],
            boot=self.boots.get(host, f"{host}-boot1"),
            cluster=self.membership() if host in self.corosync else None,
            shared_mounts=self.mounts.get(host),
            ts=t,
            sent_at=t,
        )

    def membership(self) -> dict[str, Any]:
        """What agent/cluster_stack.py reports of a quorate corosync with these members."""
        nodes = [
            {"nodeid": i, "votes": 1, "name": h} for i, h in enumerate(sorted(self.corosync), 1)
        ]
        return {"running": True, "quorate": True, "nodes": nodes}

    def heartbeat(self, t: float | None = None) -> None:
        """Every live host's heartbeat, at ``t`` (default: the store's clock)."""
        t = self.store.clock() if t is None else t
        for host in sorted(self.alive):
            self.deliver(host, self.heartbeat_of(host, t).to_dict(), t)

    def event(
        self, host: str, guest: str, state: str, t: float | None = None, detail: str = ""
    ) -> int | None:
        """A lifecycle event from ``host``; returns the cluster whose runner it wakes."""
        t = self.store.clock() if t is None else t
        message = Event(host, "lifecycle", guest, f"u-{guest}", state, detail, ts=t, sent_at=t)
        return self.deliver(host, message.to_dict(), t)

    def shutdown(self, host: str, t: float | None = None) -> int | None:
        """The host's shutdown hook (agent/shutdown.py) announces a clean shutdown."""
        t = self.store.clock() if t is None else t
        message = Event(host, "shutdown", "", "", "", "clean shutdown", ts=t, sent_at=t)
        return self.deliver(host, message.to_dict(), t)

    def crash(self, host: str, guest: str, t: float | None = None) -> int | None:
        """The guest dies on its host (QEMU killed): gone, and its agent says so at once."""
        self.running[host].discard(guest)
        return self.event(host, guest, "crashed", t, detail="failed")

    def power_off(self, host: str) -> None:
        """The host dies: its guests with it, its agent silent."""
        self.alive.discard(host)
        self.running[host].clear()

    # --- carrying out commands ----------------------------------------------------------------
    def answer(self, t: float | None = None) -> int:
        """Carry out every command due by ``t`` (default: the store's clock), in the order
        sent, including those sent meanwhile (a job's next stage); returns how many ran."""
        t = self.store.clock() if t is None else t
        done = 0
        while True:
            with self._mutex:
                if not self._queue or self._queue[0][0] > t:
                    return done
                _, _, host, command = heapq.heappop(self._queue)
            done += 1
            console_step = str(command.get("kind", "")).startswith("bootstrap.")
            if host not in self.alive and not console_step and not self.always_alive(host):
                continue  # a dead agent answers nothing (the bootstrap's steps are SSH's)
            result = self.carry_out(host, command, t)
            if result.command in self.lose_next:
                self.lose_next.discard(result.command)
                continue  # it ran; its result never reaches the console
            self.deliver(host, result.to_dict(), t)

    def always_alive(self, host: str) -> bool:
        """The agent beside the console (fences when no host can) never dies here."""
        from django.conf import settings

        return host == settings.HAVEN_CONSOLE_AGENT

    def carry_out(self, host: str, raw: dict[str, Any], t: float) -> Result:
        kind = str(raw.get("kind", ""))
        try:
            if kind.startswith("bootstrap."):  # the console's own SSH steps, in the UI tests
                command = Command(str(raw.get("id", "")), kind, dict(raw.get("args") or {}))
            else:
                command = Command.from_dict(raw)
        except ProtocolError as exc:
            error = ErrorInfo(exc.code, str(exc))
            return Result(host, str(raw.get("id", "")), kind, False, error=error, ts=t, sent_at=t)
        try:
            if command.kind in self.fail_kinds:
                raise AgentError("command_failed", f"{command.kind} failed (simulated)")
            failure = self.fail_steps.get((host, command.kind))
            if failure:
                raise AgentError("command_failed", failure)
            data = self.do(host, command)
        except AgentError as exc:
            error = ErrorInfo(exc.code, str(exc))
            return Result(host, command.id, command.kind, False, error=error, ts=t, sent_at=t)
        return Result(host, command.id, command.kind, True, data, duration_s=0.01, ts=t, sent_at=t)

    def target_of(self, dest_uri: str) -> str:
        """The host a migration URI names (its libvirt URI, address or name)."""
        from django.db.models import Q

        from console.clusters.models import Host

        name = urllib.parse.urlparse(dest_uri).hostname or ""
        host = (
            Host.objects.filter(Q(libvirt_uri=dest_uri) | Q(address=name) | Q(name=name))
            .values_list("name", flat=True)
            .first()
        )
        if host is None:
            raise AgentError("command_failed", f"no host answers at {dest_uri}")
        return host

    def do(self, host: str, command: Command) -> dict[str, Any]:
        """What one command does on ``host``; its result's data (raise AgentError to fail)."""
        kind, a = command.kind, command.args
        guests = self.running[host]
        if kind.startswith("bootstrap."):
            if kind == "bootstrap.register":
                self.alive.add(host)
            return {}
        if kind == "define":
            name, mib = guest_mib(str(a.get("xml", "")))
            self.memory[name] = mib
            return {"name": name, "uuid": f"u-{name}", "state": "shutoff"}
        if kind == "start":
            changed = a["guest"] not in guests
            guests.add(a["guest"])
            return {"name": a["guest"], "uuid": "", "state": "running", "changed": changed}
        if kind in ("shutdown", "destroy"):
            how = "shutdown" if a["guest"] in guests else "already_off"
            guests.discard(a["guest"])
            return {"name": a["guest"], "uuid": "", "state": "shutoff", "how": how}
        if kind == "migrate":
            if a["guest"] not in guests:
                raise AgentError("not_found", f"{a['guest']} does not run on {host}")
            target = self.target_of(a["dest_uri"])
            guests.discard(a["guest"])
            self.running[target].add(a["guest"])
            return {
                "duration_s": 0.5,
                "downtime_ms": 9,
                "dest_uri": a["dest_uri"],
                "name": a["guest"],
            }
        if kind == "list_guests":
            return {"guests": [{"name": g, "uuid": "", "state": "running"} for g in sorted(guests)]}
        if kind == "fence" and (a.get("params") or {}).get("ip") in self.dead_devices:
            raise AgentError("command_failed", f"{a['params']['ip']} does not answer (simulated)")
        if kind == "fence" and a.get("action") == "status":
            victim = str((a.get("params") or {}).get("plug", ""))
            self.queries.append((host, a))
            power = "on" if victim in self.alive else "off"
            if a.get("require_power") not in (None, power):
                raise AgentError("command_failed", f"the host is {power}, not {a['require_power']}")
            return {"outcome": "ok", "exit_code": 0, "power": power, "output": f"Status: {power}"}
        if kind == "fence":
            victim = str((a.get("params") or {}).get("plug", ""))
            if victim in self.alive or self.running.get(victim):
                self.power_off(victim)
            self.fenced.append(victim)
            return {"outcome": "ok", "exit_code": 0, "power": "off", "output": "Success: off"}
        if kind == "fence_metadata":
            return dict(FENCE_METADATA)
        if kind == "dlm_fence_ack":
            return {"node": a["node"], "nodeid": 0}
        if kind == "corosync_remove_node":
            return {"node": a["node"], "changed": True, "nodes": []}
        if kind == "corosync_add_node":
            return {"node": a["node"], "nodeid": a["nodeid"], "changed": True, "nodes": []}
        if kind == "tls_request":
            return {"csr": fake_csr(host), "key": "/etc/pki/libvirt/private/serverkey.pem"}
        if kind == "configure_migration":
            tls = a.get("transport") == "tls"
            return {"files": [], "changed": True, "restart_required": tls}
        return self.storage(host, kind, a)

    def storage(self, host: str, kind: str, a: dict[str, Any]) -> dict[str, Any]:
        if kind == "storage_probe":
            return self._probe(host)
        if kind == "pvcreate":
            return {"device": a["device"]}
        if kind == "vgcreate":
            if not a.get("local"):
                raise AgentError(
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
                raise AgentError(
                    "not_supported", "the kernel lacks 'gfs2' (not in /proc/filesystems)"
                )
            return {"mount_point": a["mount_point"], "changed": True}
        raise AgentError("not_supported", f"{kind} is not simulated")

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

    # --- all of it, in rounds -----------------------------------------------------------------
    def round(self, t: float | None = None) -> None:
        """Answer what is due, every live host heartbeats, the runner decides."""
        from console.ha import runner

        self.answer(t)
        self.heartbeat(t)
        if self._run_runner is not None:
            self._run_runner(self.store)
        else:
            runner.run_all(self.store)

    def start(self) -> None:
        """Play in a thread of its own, a round every ``period_s`` (the store's clock)."""
        self._thread = threading.Thread(target=self._loop, name="fake-agents", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        from django.db import close_old_connections, connection

        try:
            while not self._stop.is_set():
                try:
                    self.round()
                except Exception:  # keep playing; the test sees the error list
                    self.errors.append(traceback.format_exc())
                    log.exception("simulated agents")
                finally:
                    close_old_connections()
                self._stop.wait(self.period_s)
        finally:
            connection.close()  # this thread's own connection (a test database is dropped after)


FENCE_METADATA: dict[str, Any] = {
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


class FakeRemoteHost:
    """A Debian host as the SSH bootstrap sees it (console/bootstrap/ssh.py
    ``RemoteHost``), in this process: answers the commands the bootstrap runs, keeps the files
    it writes (``files``: path -> (text, mode)) and the commands (``ran``); when the bootstrap
    starts the agent (systemd, or the boot script), ``on_agent_start`` is called with the host's
    name (``FakeRemoteHosts`` makes its ``FakeAgents`` heartbeat). ``fail``: argv[0] (or
    argv[0] + " " + argv[1]) -> (exit status, stderr) for a command that fails.

    The cluster stack, simulated: ``authkey`` is the bytes of /etc/corosync/authkey (set for
    a member, written by the bootstrap for a new host); ``corosync-quorumtool`` and
    ``dlm_tool status`` count every node of the host's corosync.conf once corosync was
    (re)started there as quorate members."""

    def __init__(
        self,
        name: str,
        *,
        init: str = "systemd",
        on_agent_start: Callable[[str], None] | None = None,
        fail: dict[str, tuple[int, str]] | None = None,
    ) -> None:
        self.name, self.init = name, init
        self.on_agent_start = on_agent_start
        self.fail = dict(fail or {})
        self.files: dict[str, tuple[str, int]] = {}
        self.uploaded: list[str] = []
        self.ran: list[list[str]] = []
        self.closed = False
        self.authkey = b""
        self.corosync_running = False

    def run(self, argv: list[str], *, timeout: float) -> tuple[int, str, str]:
        self.ran.append(list(argv))
        for key in (" ".join(argv[:2]), argv[0]):
            if key in self.fail:
                code, stderr = self.fail[key]
                return code, "", stderr
        cmd = argv[0]
        if cmd == "id":
            return 0, "0\n", ""
        if cmd == "hostname":
            return 0, f"{self.name}\n", ""
        if cmd == "uname":
            return 0, "6.1.0-fake-amd64\n", ""
        if cmd == "python3":
            return 0, "3.11\n", ""
        if cmd == "test":
            return (0 if argv[-1] in self.files else 1), "", ""
        if cmd == "mktemp":
            return 0, "/tmp/haven-wheels.fake\n", ""
        if cmd == "flock" and argv[5] == "haven-mark":  # installed already?
            return (0 if f"{argv[6]}/.haven-complete" in self.files else 1), "", ""
        if cmd == "flock":  # the install script, under its lock
            self.files[f"{argv[6]}/.haven-complete"] = ("", 0o644)
            return 0, "installed\n", ""
        if cmd == "cat" and argv[1:] == ["/proc/1/comm"]:
            return 0, f"{self.init}\n", ""
        if argv[:3] == ["systemctl", "restart", "corosync"]:
            self.corosync_running = True
            return 0, "", ""
        if argv[-2:-1] == ["restart"] or argv[-1:] == ["restart"]:  # systemctl, boot script
            if self.on_agent_start is not None:
                self.on_agent_start(self.name)
            return 0, "", ""
        if cmd == "tail":
            return 0, "agent: started\n", ""
        return self._cluster_stack(argv)

    def _cluster_stack(self, argv: list[str]) -> tuple[int, str, str]:
        from agent.cluster_stack import parse_nodelist

        conf = self.files.get("/etc/corosync/corosync.conf", ("", 0))[0]
        nodes = parse_nodelist(conf) if self.corosync_running else []
        if argv == ["cat", "/etc/corosync/corosync.conf"]:
            return (0, conf, "") if conf else (1, "", "cat: No such file or directory")
        if argv[:2] == ["base64", "-w0"] and argv[2] == "/etc/corosync/authkey":
            if not self.authkey:
                return 1, "", "base64: /etc/corosync/authkey: No such file or directory"
            return 0, base64.b64encode(self.authkey).decode(), ""
        if argv[0] == "sh" and argv[3:4] == ["authkey"]:  # decode the uploaded key in place
            self.authkey = base64.b64decode(self.files.pop(argv[4])[0])
            return 0, "", ""
        if argv[:3] == ["systemctl", "is-active", "corosync"]:
            return (0 if self.corosync_running else 3), "", ""
        if argv[0] == "dpkg-query":
            return 0, "".join(f"{p} ii \n" for p in argv[4:]), ""
        if argv[0] == "corosync-quorumtool":
            if not nodes:
                return 1, "", "Cannot initialize QUORUM service"
            mine = next((n["nodeid"] for n in nodes if n.get("name") == self.name), "0")
            rows = "".join(f"{n['nodeid']} 1 NR {n['name']}\n" for n in nodes)
            return 0, f"Node ID: {mine}\nQuorate: Yes\n\nNodeid Votes Qdevice Name\n{rows}", ""
        if argv[:2] == ["dlm_tool", "status"]:
            return 0, "".join(f"node {n['nodeid']} M add 1 rem 0\n" for n in nodes), ""
        if argv[0] == "lvmconfig":
            lvm = self.files.get("/etc/lvm/lvm.conf", ("", 0))[0]
            return 0, "use_lvmlockd=1\n" if "use_lvmlockd = 1" in lvm else "use_lvmlockd=0\n", ""
        return 0, "", ""  # mkdir, rm, systemctl daemon-reload / enable, lvmlockctl, ...

    def write_file(self, path: str, text: str, mode: int) -> None:
        self.files[path] = (text, mode)

    def put(self, local: Path, remote: str) -> None:
        self.uploaded.append(remote)

    def close(self) -> None:
        self.closed = True


class FakeRemoteHosts:
    """A bootstrap connector (``bootstrap.use_connector``) to ``FakeRemoteHost``s: each host
    has a root password and a host key fingerprint; a wrong one is refused in the words the
    SSH connector uses, an unknown address is unreachable. A started agent joins ``agents``."""

    def __init__(self, agents: FakeAgents | None = None) -> None:
        self.agents = agents
        self.hosts: dict[str, tuple[str, str, FakeRemoteHost]] = {}  # address -> ...

    def add(
        self, name: str, address: str, password: str, fingerprint: str, **kw: Any
    ) -> FakeRemoteHost:
        host = FakeRemoteHost(name, on_agent_start=self._started, **kw)
        self.hosts[address] = (password, fingerprint, host)
        return host

    def _started(self, name: str) -> None:
        if self.agents is not None:
            self.agents.alive.add(name)

    def __call__(
        self, name: str, address: str, port: int, password: str, fingerprint: str
    ) -> FakeRemoteHost:
        from console.bootstrap.ssh import BootstrapError

        if address not in self.hosts:
            raise BootstrapError(f"{name} unreachable: no route to host")
        right_password, key, host = self.hosts[address]
        if fingerprint != key:
            raise BootstrapError(f"host key mismatch for {name}: expected {fingerprint}, got {key}")
        if password != right_password:
            raise BootstrapError(f"wrong root password for {name}")
        return host
