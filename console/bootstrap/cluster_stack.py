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

**Joining a formed cluster** (membership.py ``add_hosts``): corosync needs the cluster's
authkey, which the console never keeps. The job then has two more steps, on one existing
member whose root password the person gave (used once, like every root password):

``cluster.member``    SSH to the member (its host key pinned at its own bootstrap), read its
                      corosync.conf and ``/etc/corosync/authkey``; the key is held in this
                      process's memory for the job only (never in the database, a log, a step's
                      result or an error) and written to the new hosts by their
                      ``cluster.corosync``; the new hosts get the next node ids;
``cluster.extend``    once every new host has its agent and packages: each existing member's
                      agent adds the new nodes to its corosync.conf and reloads
                      (``corosync_add_node``: ``corosync-cfgtool -R``).

The new hosts' ``cluster.corosync`` waits for that, then writes the member's corosync.conf
with the new nodes (byte for byte what the members now have) and the key and starts
corosync; ``cluster.dlm`` and ``cluster.lvmlockd`` wait for every node, old and new, as when
forming. Then the storage: ``console.storage.services.join_hosts``.

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

import base64
import binascii
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings

from agent import protocol
from agent.cluster_stack import parse_dlm_status, parse_nodelist, parse_quorumtool, with_nodes
from console.clusters.choices import HostState
from console.clusters.models import Host
from console.jobs import services as jobs
from console.jobs.models import FINISHED_STATUSES, Job, JobStatus, JobStep, StepStatus

STEP_KINDS = ("cluster.packages", "cluster.corosync", "cluster.dlm", "cluster.lvmlockd")
JOIN_STEP_KINDS = ("cluster.member", "cluster.extend")  # on the member the key is read from
COROSYNC_CONF = "/etc/corosync/corosync.conf"
AUTHKEY_PATH = "/etc/corosync/authkey"
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
# After= dlm and lvmlockd (which it starts itself: at boot they have no job of their own, so
# this orders nothing then) is for the shutdown, whose stop order is the reverse: the shared
# LVs' activation units and their GFS2 mounts stop first (they come after this unit), then this
# unit stops every lockspace lvmlockd still holds, and only then are lvmlockd and dlm stopped.
# Stopped while a lockspace is active, dlm_controld ignores SIGTERM ("shutdown ignored, active
# lockspaces") until systemd kills it 90 s later; its peers then see its daemon gone
# ("procdown") and retry a fence of a host that shut down cleanly for ever (the storage lab's
# `systemctl poweroff`, 2026-12-04: 188 s to power off, survivors looping on dlm_stonith).
JOIN_UNIT = f"""[Unit]
Description=Haven: dlm and lvmlockd at boot, once corosync is quorate (in order, gated on state)
Requires=corosync.service
After=corosync.service network-online.target dlm.service lvmlockd.service
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
TimeoutStartSec=0
ExecStart={JOIN_SCRIPT_PATH}
ExecStop=-/sbin/lvmlockctl --stop-lockspaces --wait 1

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
    """Drop the job's authkey (and a join's membership) from memory (the bootstrap calls this
    when it ends)."""
    with _authkeys_lock:
        _authkeys.pop(job_id, None)
        _joins.pop(job_id, None)


@dataclass
class Join:
    """What a join job read from the member (``cluster.member``), in memory only."""

    key: bytes = field(repr=False)
    conf: str  # the member's corosync.conf with the new nodes
    nodes: list[tuple[int, str, str]]  # every node, old and new: (id, name, address)
    new: list[tuple[int, str, str]]


_joins: dict[int, Join] = {}


def joining(job: Job) -> bool:
    """A bootstrap job that adds hosts to a formed cluster stack (``cluster.member`` first)."""
    return bool(job.params.get("join"))


def _join(job_id: int) -> Join:
    with _authkeys_lock:
        join = _joins.get(job_id)
    if join is None:  # the console restarted mid-job, or cluster.member never succeeded
        raise ClusterStackError(
            "the member's corosync key and membership are not known to this job "
            "(cluster.member did not succeed in this console process): add the hosts again"
        )
    return join


def members(job: Job) -> list[Host]:
    """The job's hosts in the order they were named: node id = position + 1."""
    order = [str(n) for n in job.params.get("hosts", [])]
    hosts = {h.name: h for h in Host.objects.filter(name__in=order)}
    return [hosts[n] for n in order if n in hosts]


def nodes(job: Job) -> list[tuple[int, str, str]]:
    """Every corosync node once the job is done, (id, name, address): the job's hosts when it
    forms a cluster; the member's nodelist and the new hosts when it joins one."""
    if joining(job):
        return list(_join(job.pk).nodes)
    return [(i + 1, h.name, h.address) for i, h in enumerate(members(job))]


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
    if joining(run.job):
        return _corosync_join(run)
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


def _write_corosync(run: HostSession, conf: str, key: bytes | None = None) -> None:
    run.run(["mkdir", "-p", "/etc/corosync", "/var/log/corosync"], what="mkdir")
    key = authkey(run.job.pk) if key is None else key
    # The authkey is binary: written base64 through SFTP, decoded on the host, mode 0400.
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
    expected = len(nodes(run.job))

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


# --- joining a formed cluster ----------------------------------------------------------------

_CLUSTER_NAME_LINE_RE = re.compile(r"^\s*cluster_name:\s*(\S+)\s*$", re.MULTILINE)
#: a step another pipeline of the job waits for has ended without success
_ENDED = frozenset({StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.LOST})


def _read_member(run: HostSession) -> dict[str, Any]:
    """``cluster.member``: SSH to the member, read corosync.conf and the authkey (kept in
    memory for the job: ``_joins``), choose the new hosts' node ids. Nothing is changed."""
    from console.bootstrap import ssh as bootstrap

    bootstrap._connect(run)  # type: ignore[arg-type]  # the member's password, used once
    code, conf, _ = run.run(["cat", COROSYNC_CONF], check=False, what="reading corosync.conf")
    if code != 0 or not conf.strip():
        raise ClusterStackError(
            f"{run.name} has no {COROSYNC_CONF}: it is not in the cluster stack (repair it, "
            "or name another host to read the corosync key from)"
        )
    found = _CLUSTER_NAME_LINE_RE.search(conf)
    cluster = run.host.cluster.name
    if found is None or found.group(1) != cluster:
        said = found.group(1) if found else "no cluster_name"
        raise ClusterStackError(f"{run.name}'s corosync.conf is for {said}, not {cluster}")
    # the key's bytes: never echoed, whatever happens (no output in any message)
    code, encoded, _ = run.run(["base64", "-w0", AUTHKEY_PATH], check=False, what="the authkey")
    try:
        key = base64.b64decode(encoded.strip(), validate=True) if code == 0 else b""
    except (binascii.Error, ValueError):
        key = b""
    finally:
        del encoded
    if len(key) < 128:  # corosync's own minimum is 1024 bits
        raise ClusterStackError(
            f"cannot read a corosync authkey from {AUTHKEY_PATH} on {run.name} (exit {code})"
        )
    have = parse_nodelist(conf)
    try:
        existing = [(int(n["nodeid"]), n["name"], n["ring0_addr"]) for n in have]
    except (KeyError, ValueError):
        raise ClusterStackError(
            f"{run.name}'s corosync.conf has a node without nodeid, name or ring0_addr"
        ) from None
    hosts = {h.name: h for h in Host.objects.filter(name__in=run.job.params.get("hosts", []))}
    new: list[tuple[int, str, str]] = []
    next_id = max([i for i, _, _ in existing] or [0]) + 1
    for name in run.job.params.get("hosts", []):
        host = hosts[name]
        known = next((n for n in existing if n[1] == name), None)
        if known is not None and known[2] != host.address:
            raise ClusterStackError(
                f"{name} is in {run.name}'s corosync nodelist at {known[2]}, not {host.address}: "
                "remove that host first"
            )
        if known is not None:  # an earlier add got this far: the same node again
            new.append(known)
        else:
            new.append((next_id, name, host.address))
            next_id += 1
    try:
        merged = with_nodes(conf, new)
    except ValueError as exc:
        raise ClusterStackError(f"{run.name}'s corosync.conf: {exc}") from None
    everyone = [*existing, *[n for n in new if n not in existing]]
    with _authkeys_lock:
        _joins[run.job.pk] = Join(key, merged if merged is not None else conf, everyone, new)
    del key
    return {
        "member": run.name,
        "nodes": [list(n) for n in everyone],
        "new": [list(n) for n in new],
        "authkey": "read; held in the console's memory for this job only",
    }


def _await_steps(run: HostSession, what: str, kind: str, hosts: list[str], step: str) -> None:
    """Wait (no deadline of its own: those steps have theirs) until ``kind`` succeeded on every
    one of ``hosts`` in this job; ClusterStackError once one of them ended otherwise."""
    said = ""
    while True:
        rows = list(
            JobStep.objects.filter(job_id=run.job.pk, kind=kind, host__name__in=hosts)
            .values_list("host__name", "status")
        )  # fmt: skip
        ended = sorted(n for n, status in rows if status in _ENDED)
        if ended:
            raise ClusterStackError(f"{kind} did not succeed on {', '.join(ended)}: {what} stopped")
        done = sum(1 for _, status in rows if status == StepStatus.SUCCEEDED)
        if done == len(hosts):
            return
        status = Job.objects.filter(pk=run.job.pk).values_list("status", flat=True).first()
        if status in FINISHED_STATUSES:
            raise ClusterStackError(f"the job ended ({status}) before {what}")
        state = f"waiting for {kind} on {len(hosts) - done} of {len(hosts)} host(s)"
        if state != said:
            jobs.add_event(run.job, f"{run.name}: {what}: {state}", host=run.host, step=step)
            said = state
        time.sleep(1.0)


def _extend(run: HostSession) -> dict[str, Any]:
    """``cluster.extend``: once the new hosts have their agents and packages, every existing
    member's agent adds them to its corosync.conf and reloads corosync (one job)."""
    join = _join(run.job.pk)
    new_names = [n for _, n, _ in join.new]
    _await_steps(run, "extending the membership", "cluster.packages", new_names,
                 "cluster.extend")  # fmt: skip
    old = [n for _, n, _ in join.nodes if n not in new_names]
    rows = {h.name: h for h in Host.objects.filter(cluster=run.host.cluster, name__in=old)}
    strangers = [n for n in old if n not in rows]
    if strangers:
        raise ClusterStackError(
            f"corosync's nodelist on {run.name} has {', '.join(strangers)}, which "
            f"{'is' if len(strangers) == 1 else 'are'} not a host of {run.host.cluster.name}"
        )
    away = [h for h in rows.values() if h.state not in (HostState.ONLINE, HostState.MAINTENANCE)]
    if away:
        raise ClusterStackError(
            "every member must be online to take the new hosts into corosync: "
            + ", ".join(f"{h.name} is {h.state}" for h in away)
        )
    steps = [
        jobs.StepSpec.of(rows[name], protocol.CorosyncAddNodeArgs(node, address, nodeid), stage)
        for stage, (nodeid, node, address) in enumerate(join.new)
        for name in old
    ]  # fmt: skip
    job = jobs.create_job(
        "corosync-add-node",
        steps,
        cluster=run.host.cluster,
        params={"hosts": new_names, "members": old, "bootstrap_job": run.job.pk},
        message=f"add {', '.join(new_names)} to the corosync membership of {', '.join(old)} "
        f"(bootstrap job {run.job.pk})",
    )
    deadline = time.monotonic() + wait_s()
    while True:
        job.refresh_from_db()
        if job.status in FINISHED_STATUSES:
            break
        if time.monotonic() > deadline:
            raise ClusterStackError(f"corosync_add_node got no answer within {wait_s():.0f} s "
                                    f"(job {job.pk})")  # fmt: skip
        time.sleep(0.5)
    if job.status != JobStatus.SUCCEEDED:
        raise ClusterStackError(f"adding the new nodes to corosync failed: {job.explanation}")
    return {"job": job.pk, "members": old, "new": [list(n) for n in join.new]}


def _corosync_join(run: HostSession) -> dict[str, Any]:
    """A new host of a join job: once the members list it, the member's corosync.conf (with
    the new nodes) and the cluster's key, corosync started; quorate with every node."""
    member = str(run.job.params["join"]["member"])
    _await_steps(run, "the members' corosync to list the new hosts", "cluster.extend",
                 [member], "cluster.corosync")  # fmt: skip
    join = _join(run.job.pk)
    if run.name not in [n for _, n, _ in join.new]:
        raise ClusterStackError(f"{run.name} is not one of the job's new hosts")
    _write_corosync(run, join.conf, join.key)
    return _wait_quorate(run, join.nodes, True)


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
    "cluster.member": _guard(_read_member),
    "cluster.extend": _guard(_extend),
}


def step_kinds(shared_storage: bool) -> tuple[str, ...]:
    """The cluster-stack steps a bootstrap job has per host (none without shared storage)."""
    return STEP_KINDS if shared_storage else ()


__all__ = ["STEPS", "STEP_KINDS", "authkey", "corosync_conf", "forget", "parse_quorumtool"]
