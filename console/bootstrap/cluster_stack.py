"""The cluster stack under shared storage, set up by the SSH bootstrap ("Enable shared storage").

Four more steps per host of the ``bootstrap`` job, after the agent is registered:

``cluster.packages``  corosync, dlm-controld, lvm2, lvm2-lockd and gfs2-utils from the host's own
                      package sources (``apt-get install`` only for what ``dpkg-query`` says is
                      missing, so a host with everything installed needs no network);
``cluster.corosync``  ``/etc/corosync/corosync.conf`` (cluster name, node ids in the job's host
                      order, ring0 addresses, knet with aes256/sha256, votequorum, the token of
                      ``HAVEN_COROSYNC_TOKEN_MS``) and one authkey shared by the job's hosts
                      (made in memory for the job, never stored), then ``systemctl enable
                      --now corosync``; done when ``corosync-quorumtool -s -p`` says quorate
                      with every host of the job a member;
``cluster.dlm``       ``systemctl start dlm``; done when ``dlm_tool status`` shows every
                      node ``M`` (member);
``cluster.lvmlockd``  ``use_lvmlockd = 1`` in ``/etc/lvm/lvm.conf``, ``systemctl start
                      lvmlockd``; done when ``lvmlockctl --info`` answers. Then the boot path:
                      ``haven-cluster-join.service`` (below) enabled, and dlm, lvmlockd and
                      lvmlocks disabled, so that only it starts them at boot.

The order is gated on state, never on sleeps (LAB.md "Storage VMs": starting everything at
once on a rejoining node deadlocked the join): each host waits, within its own step, until the
whole membership is there before it starts the next daemon. A host that fails makes the others
time out with a plain reason naming what is missing.

At boot the same order holds: systemd starts corosync; ``haven-cluster-join`` waits until it is
quorate, starts dlm, waits until dlm has every corosync member, then starts lvmlockd; the
shared LVs' activation units (agent/storage.py) and their GFS2 mounts come after it. Left to
systemd (dlm, lvmlockd and lvmlocks enabled, the mount requiring dlm), a host returning after
a fence started them all at once while corosync was still joining, and its ``lvm_global``
lockspace join hung (deploy/lab/README.md).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from django.conf import settings

from agent.cluster_stack import parse_dlm_status, parse_quorumtool
from console.clusters.models import Host
from console.jobs import services as jobs
from console.jobs.models import Job

STEP_KINDS = ("cluster.packages", "cluster.corosync", "cluster.dlm", "cluster.lvmlockd")
JOIN_UNIT_NAME = "haven-cluster-join.service"
JOIN_SCRIPT_PATH = "/usr/local/sbin/haven-cluster-join"
JOIN_SCRIPT = r"""#!/bin/sh
# Written by the Haven console's bootstrap (shared storage). At boot, after corosync: dlm only
# once corosync is quorate, lvmlockd only once dlm has every corosync member (gated on state).
set -u
PATH=/usr/sbin:/usr/bin:/sbin:/bin
members() {
    corosync-quorumtool -s -p 2>/dev/null |
        awk '$1 ~ /^[0-9]+$/ && $2 ~ /^[0-9]+$/ {n++} END {print n+0}'
}
said=""
say() { [ "$1" = "$said" ] || echo "haven-cluster-join: $1"; said=$1; }
until corosync-quorumtool -s -p 2>/dev/null | grep -q '^Quorate: *Yes'; do
    say "waiting for corosync quorum"; sleep 2
done
say "corosync quorate with $(members) members: starting dlm"
systemctl start dlm.service
while :; do
    want=$(members); have=$(dlm_tool status 2>/dev/null | grep -c '^node [0-9]* M')
    [ "$want" -gt 0 ] && [ "$have" -ge "$want" ] && break
    say "waiting for dlm: $have of $want corosync members"; sleep 2
done
say "dlm has every corosync member: starting lvmlockd"
systemctl start lvmlockd.service
until lvmlockctl --info >/dev/null 2>&1; do say "waiting for lvmlockd"; sleep 2; done
say "lvmlockd answering: the cluster stack is up"
"""
JOIN_UNIT = f"""[Unit]
Description=Haven: dlm and lvmlockd at boot, once corosync is quorate (in order, gated on state)
Requires=corosync.service
After=corosync.service network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
TimeoutStartSec=0
ExecStart={JOIN_SCRIPT_PATH}

[Install]
WantedBy=multi-user.target
"""
PACKAGES = ("corosync", "dlm-controld", "lvm2", "lvm2-lockd", "gfs2-utils")
DEFAULT_TOKEN_MS = 3000
DEFAULT_WAIT_S = 300.0
AUTHKEY_BYTES = 256
LVM_CONF = "/etc/lvm/lvm.conf"
_CLUSTER_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class ClusterStackError(Exception):
    """A cluster-stack step failed; the message says why in plain words."""


class HostSession(Protocol):
    """What the steps need from the bootstrap's SSH session of one host."""

    job: Job
    host: Host

    @property
    def name(self) -> str: ...

    def run(
        self, argv: list[str], *, check: bool = True, timeout: float = ..., what: str = ""
    ) -> tuple[int, str, str]: ...

    def write_file(self, path: str, text: str, mode: int) -> None: ...


# --- what the job shares between its hosts ----------------------------------------------------

_authkeys: dict[int, bytes] = {}
_authkeys_lock = threading.Lock()


def authkey(job_id: int) -> bytes:
    """The corosync authkey of one bootstrap job, made once in memory for all its hosts."""
    with _authkeys_lock:
        return _authkeys.setdefault(job_id, secrets.token_bytes(AUTHKEY_BYTES))


def forget(job_id: int) -> None:
    """Drop the job's authkey from memory (the bootstrap calls this when it ends)."""
    with _authkeys_lock:
        _authkeys.pop(job_id, None)


def members(job: Job) -> list[Host]:
    """The job's hosts in the order they were named: node id = position + 1."""
    order = [str(n) for n in job.params.get("hosts", [])]
    hosts = {h.name: h for h in Host.objects.filter(name__in=order)}
    return [hosts[n] for n in order if n in hosts]


def token_ms() -> int:
    return int(getattr(settings, "HAVEN_COROSYNC_TOKEN_MS", DEFAULT_TOKEN_MS))


def wait_s() -> float:
    return float(getattr(settings, "HAVEN_CLUSTER_WAIT_S", DEFAULT_WAIT_S))


# --- configuration files ----------------------------------------------------------------------


def corosync_conf(cluster: str, nodes: list[tuple[int, str, str]], token: int) -> str:
    """corosync.conf for (node id, name, address) triples. Every ``{`` ends its line (corosync's
    parser refuses ``node { name: x`` on one line)."""
    if not _CLUSTER_NAME_RE.match(cluster):
        raise ClusterStackError(f"{cluster!r} cannot be a corosync cluster name")
    lines = [
        "# Written by the Haven console's bootstrap (shared storage). Changes are overwritten.",
        "totem {",
        "    version: 2",
        f"    cluster_name: {cluster}",
        "    transport: knet",
        "    crypto_cipher: aes256",
        "    crypto_hash: sha256",
        f"    token: {token}",
        "    token_coefficient: 0",
        f"    join: {max(50, token // 10)}",
        f"    consensus: {int(token * 1.2)}",
        "}",
        "",
        "quorum {",
        "    provider: corosync_votequorum",
        *(["    two_node: 1"] if len(nodes) == 2 else []),
        "}",
        "",
        "nodelist {",
    ]
    for nodeid, name, address in nodes:
        lines += [
            "    node {",
            f"        ring0_addr: {address}",
            f"        name: {name}",
            f"        nodeid: {nodeid}",
            "    }",
        ]
    lines += [
        "}",
        "",
        "logging {",
        "    to_logfile: yes",
        "    logfile: /var/log/corosync/corosync.log",
        "    to_syslog: yes",
        "    timestamp: on",
        "}",
        "",
    ]
    return "\n".join(lines)


_USE_LVMLOCKD_RE = re.compile(r"^(\s*)use_lvmlockd\s*=.*$", re.MULTILINE)


def with_lvmlockd(lvm_conf: str) -> str:
    """lvm.conf with ``use_lvmlockd = 1`` in its ``global`` section (set or added)."""
    if _USE_LVMLOCKD_RE.search(lvm_conf):
        return _USE_LVMLOCKD_RE.sub(r"\1use_lvmlockd = 1", lvm_conf)
    out, done = [], False
    for line in lvm_conf.splitlines():
        out.append(line)
        if not done and re.match(r"^global\s*\{\s*$", line):
            out.append("\tuse_lvmlockd = 1")
            done = True
    if not done:
        out += ["global {", "\tuse_lvmlockd = 1", "}"]
    return "\n".join(out) + "\n"


# --- the steps ------------------------------------------------------------------------------


def _wait(run: HostSession, what: str, check: Callable[[], tuple[bool, str]], step: str) -> str:
    """Poll check() (ok, state in words) until ok; ClusterStackError with the last state."""
    deadline = time.monotonic() + wait_s()
    last, said = "", ""
    while True:
        ok, last = check()
        if ok:
            return last
        if last != said:
            jobs.add_event(run.job, f"{run.name}: {what}: {last}", host=run.host, step=step)
            said = last
        if time.monotonic() > deadline:
            raise ClusterStackError(
                f"{what} on {run.name} did not happen within {wait_s():.0f} s: {last}"
            )
        time.sleep(2.0)


def _packages(run: HostSession) -> dict[str, Any]:
    fmt = "${Package} ${db:Status-Abbrev}\\n"
    _, out, _ = run.run(["dpkg-query", "-W", "-f", fmt, *PACKAGES], check=False, what="dpkg-query")
    installed = {p for p, _, status in (ln.partition(" ") for ln in out.splitlines())
                 if status.startswith("ii")}  # fmt: skip
    missing = [p for p in PACKAGES if p not in installed]
    if missing:
        code, out, err = run.run(
            [
                "env",
                "DEBIAN_FRONTEND=noninteractive",
                "apt-get",
                "install",
                "-y",
                "--no-install-recommends",
                *missing,
            ],
            check=False,
            timeout=900,
            what="apt-get install",
        )
        if code != 0:
            tail = " / ".join((err.strip() or out.strip()).splitlines()[-3:])
            raise ClusterStackError(
                f"installing {', '.join(missing)} on {run.name} failed (exit {code}): {tail}"
            )
    return {"installed": missing, "already_installed": sorted(installed)}


def _corosync(run: HostSession) -> dict[str, Any]:
    nodes = [(i + 1, h.name, h.address) for i, h in enumerate(members(run.job))]
    if run.name not in [n for _, n, _ in nodes]:
        raise ClusterStackError(f"{run.name} is not one of the job's hosts")
    conf = corosync_conf(run.host.cluster.name, nodes, token_ms())
    _, old, _ = run.run(["cat", "/etc/corosync/corosync.conf"], check=False, what="cat")
    code, _, _ = run.run(["systemctl", "is-active", "corosync"], check=False, what="systemctl")
    if old == conf and code == 0:
        # A bootstrap run again over a formed cluster: same members, corosync running. A new
        # authkey or a restart would only break the running dlm; wait for quorum as usual.
        restarted = False
    else:
        _write_corosync(run, conf)
        restarted = True
    return _wait_quorate(run, nodes, restarted)


def _write_corosync(run: HostSession, conf: str) -> None:
    run.run(["mkdir", "-p", "/etc/corosync", "/var/log/corosync"], what="mkdir")
    key = authkey(run.job.pk)
    # The authkey is binary: written base64 through SFTP, decoded on the host, mode 0400.
    import base64

    run.write_file("/etc/corosync/authkey.b64", base64.b64encode(key).decode(), 0o600)
    run.run(
        [
            "sh",
            "-c",
            'umask 077 && base64 -d "$1" > "$2.new" && chmod 0400 "$2.new" && mv "$2.new" "$2"'
            ' && rm -f "$1"',
            "authkey",
            "/etc/corosync/authkey.b64",
            "/etc/corosync/authkey",
        ],
        what="writing the corosync authkey",
    )
    run.write_file("/etc/corosync/corosync.conf", conf, 0o644)
    run.run(["systemctl", "enable", "corosync"], what="systemctl enable corosync")
    run.run(["systemctl", "restart", "corosync"], what="systemctl restart corosync")


def _wait_quorate(
    run: HostSession, nodes: list[tuple[int, str, str]], restarted: bool
) -> dict[str, Any]:
    expected = len(nodes)

    def quorate() -> tuple[bool, str]:
        code, out, err = run.run(
            ["corosync-quorumtool", "-s", "-p"], check=False, what="corosync-quorumtool"
        )
        if code not in (0, 2):
            return False, (err.strip() or out.strip() or f"exit {code}").splitlines()[-1]
        state = parse_quorumtool(out)
        seen = len(state["nodes"])
        if state["quorate"] and seen == expected:
            return True, f"quorate, {seen} of {expected} members"
        quorate_word = "quorate" if state["quorate"] else "not quorate"
        return False, f"{quorate_word}, {seen} of {expected} members"

    state = _wait(run, "corosync membership", quorate, "cluster.corosync")
    return {"nodeid": next(i for i, n, _ in nodes if n == run.name), "state": state,
            "token_ms": token_ms(), "nodes": [n for _, n, _ in nodes],
            "restarted": restarted}  # fmt: skip


def _dlm(run: HostSession) -> dict[str, Any]:
    run.run(["systemctl", "start", "dlm"], what="systemctl start dlm", timeout=120)
    expected = len(members(run.job))

    def joined() -> tuple[bool, str]:
        code, out, err = run.run(["dlm_tool", "status"], check=False, what="dlm_tool status")
        if code != 0:
            return False, (err.strip() or out.strip() or f"exit {code}").splitlines()[-1]
        nodes = parse_dlm_status(out)
        m = sorted(n for n, s in nodes.items() if s == "M")
        return len(m) == expected, f"{len(m)} of {expected} nodes members (ids {m})"

    return {"state": _wait(run, "dlm membership", joined, "cluster.dlm")}


def _lvmlockd(run: HostSession) -> dict[str, Any]:
    _, conf, _ = run.run(["cat", LVM_CONF], what=f"reading {LVM_CONF}")
    new = with_lvmlockd(conf)
    if new != conf:
        run.write_file(LVM_CONF, new, 0o644)
    _, value, _ = run.run(["lvmconfig", "global/use_lvmlockd"], what="lvmconfig")
    if value.strip() != "use_lvmlockd=1":
        raise ClusterStackError(f"use_lvmlockd is not 1 on {run.name} after editing: {value}")
    run.run(["systemctl", "start", "lvmlockd"], what="systemctl start lvmlockd", timeout=120)

    def answering() -> tuple[bool, str]:
        code, _out, err = run.run(["lvmlockctl", "--info"], check=False, what="lvmlockctl")
        return code == 0, "answering" if code == 0 else (err.strip() or f"exit {code}")

    state = _wait(run, "lvmlockd", answering, "cluster.lvmlockd")
    # the boot path: only haven-cluster-join starts dlm and lvmlockd, in order (module doc)
    run.write_file(JOIN_SCRIPT_PATH, JOIN_SCRIPT, 0o755)
    run.write_file(f"/etc/systemd/system/{JOIN_UNIT_NAME}", JOIN_UNIT, 0o644)
    # --no-reload: only the symlinks, read at the next boot (a daemon-reload per call took
    # over 120 s under TCG on a loaded machine, and the bootstrap's step timed out)
    run.run(["systemctl", "--no-reload", "disable", "dlm", "lvmlockd", "lvmlocks"],
            what="systemctl disable", timeout=300)  # fmt: skip
    run.run(["systemctl", "--no-reload", "enable", JOIN_UNIT_NAME], what="systemctl enable",
            timeout=300)  # fmt: skip
    return {"state": state, "boot": JOIN_UNIT_NAME}


def _guard(fn: Callable[[HostSession], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
    """Turn ClusterStackError into the bootstrap's own error type (its message as is)."""

    def step(run: Any) -> dict[str, Any]:
        from console.bootstrap.ssh import BootstrapError

        try:
            return fn(run)
        except ClusterStackError as exc:
            raise BootstrapError(str(exc)) from None

    return step


STEPS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "cluster.packages": _guard(_packages),
    "cluster.corosync": _guard(_corosync),
    "cluster.dlm": _guard(_dlm),
    "cluster.lvmlockd": _guard(_lvmlockd),
}


def step_kinds(shared_storage: bool) -> tuple[str, ...]:
    """The cluster-stack steps a bootstrap job has (none without shared storage)."""
    return STEP_KINDS if shared_storage else ()


__all__ = ["STEPS", "STEP_KINDS", "authkey", "corosync_conf", "forget", "parse_quorumtool"]
