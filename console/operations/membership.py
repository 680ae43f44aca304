"""Day two: a cluster's hosts change. Add hosts, repair one, remove one.

The pages, the API and the CLI call these, so all three refuse the same things.

- ``add_hosts(cluster, specs)``: the SSH bootstrap (console/bootstrap/ssh.py) of new hosts
  into an existing cluster, with the same per-host progress as the create-cluster wizard.
  A name that is already a host is refused (repair it instead). Where the cluster's GFS2 file
  systems have fewer journals than it now has hosts, the storage service's ``add_journals``
  is asked for the missing ones once the bootstrap succeeded. A cluster formed with shared
  storage (corosync, dlm, lvmlockd) also needs the root password of one of its hosts
  (``member_password``; ``member`` names which, else the first online one by name): the
  bootstrap reads the cluster's corosync key there over SSH (the key lives in the console's
  memory for that one job, never stored or logged; the password is used once), every member's
  agent adds the new nodes to its corosync.conf and reloads, the new hosts start corosync,
  dlm and lvmlockd in order (console/bootstrap/cluster_stack.py), and once the job succeeded
  ``console.storage.services.join_hosts`` adds the missing GFS2 journals, lock-starts the
  clustered VGs on the new hosts and mounts the GFS2 file systems there. Refused while any
  host of the cluster is not online (its corosync could not be told).
- ``repair_host(host, password)``: the same bootstrap again on one host of the cluster (a new
  agent version, lost credentials, an agent deleted): the host row stays, so its guests,
  fence devices, jobs and events stay; the agent is installed where missing and gets new
  broker credentials and a new sealing key.
- ``remove_host(host, password="")``: refused while guests run there, are on their way there
  or may still run there (put it in maintenance first: its guests move away live), and
  refused while it is silent but not confirmed down (wait for its fence, or acknowledge it is
  down). A reachable host is put in maintenance (nothing new lands on it meanwhile), then,
  given the root password, its agent is stopped and uninstalled over SSH (its unit or boot
  hook and its configuration with the broker credentials, and every installed version under
  /opt/haven-agent it used that no other host uses: each bootstrap marks the version it runs
  from with the host's name in ``<version>/.users/``, so on the lab, whose hosts share one
  file system, the others' version stays). Last, in one transaction: the broker credentials
  are revoked (its Redis user and keys, console/ha/credentials.py) and the row goes,
  with its fence devices and domain memberships. Without a password the agent is left on the
  host, unable to log in. A host that is down (fenced, offline, acknowledged) is removed
  without SSH. In a cluster formed
  with shared storage the SSH step also takes the host out of the cluster stack first
  (unmounts its GFS2, deactivates and lock-stops the shared VGs, stops and disables
  lvmlocks, lvmlockd, dlm and corosync, drops the GFS2 fstab lines, activation units and
  its corosync.conf and authkey: it leaves dlm and corosync cleanly, so nobody needs to fence
  it), and once the row is gone a ``corosync-remove-node`` job asks every online remaining
  host to drop it from its corosync.conf and reload (``corosync-cfgtool -R``): membership
  and expected votes no longer count it. (Going from three hosts to two leaves
  ``two_node`` off: both remaining hosts are then needed for quorum.)

Every removal and addition is a job (kind ``remove-host`` / ``bootstrap``) with its steps and
events, and an event in the log.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from agent import protocol
from console.bootstrap import ssh as bootstrap
from console.clusters.choices import HostState
from console.clusters.models import Cluster, Host
from console.core.errors import Refused
from console.core.services import actor_name
from console.events.services import record
from console.jobs import services as jobs
from console.jobs.models import Job, JobStatus, JobStep, StepStatus

log = logging.getLogger("haven.membership")

REMOVE_STEPS = ("remove.agent", "remove.forget")
#: host states in which the host is known to be down: removable without reaching it
DOWN_STATES = frozenset({HostState.FENCED, HostState.OFFLINE, HostState.NEW})


# --- add and repair ---------------------------------------------------------------------------


def shared_storage(cluster: Cluster) -> bool:
    """The cluster was formed with the cluster stack (corosync, dlm, lvmlockd)."""
    return Job.objects.filter(
        cluster=cluster, kind="bootstrap", params__shared_storage=True
    ).exists()


def add_hosts(
    cluster: Cluster,
    specs: list[bootstrap.HostSpec],
    *,
    actor: Any,
    member_password: str = "",
    member: str = "",
) -> Job:
    """Bootstrap new hosts into ``cluster``; the job at once (it runs after the commit).
    With shared storage, ``member_password`` (and optionally ``member``): module docstring."""
    if not specs:
        raise Refused("Name at least one host to add.", status=400, field="hosts")
    for spec in specs:
        existing = Host.objects.filter(name=spec.name).select_related("cluster").first()
        if existing is not None and existing.cluster_id == cluster.pk:
            raise Refused(
                f"{spec.name} is already a host of cluster {cluster.name}: repair it instead "
                "(the bootstrap again, keeping its guests and history).",
                field="hosts",
            )
        if existing is not None:
            raise Refused(
                f"{spec.name} is a host of cluster {existing.cluster.name}: remove it there first.",
                field="hosts",
            )
    join = _join_through(cluster, member, member_password) if shared_storage(cluster) else None
    cluster_id = cluster.pk
    # once the hosts are in (in the bootstrap's own thread, never in the request): journals
    # for GFS2 file systems that have fewer than hosts
    return _start(
        cluster,
        specs,
        actor=actor,
        join=join,
        then=lambda job_id: add_missing_journals(job_id, cluster_id, actor=actor),
    )


@dataclass(frozen=True)
class HostKeyCheck:
    """The host key a host presents now, beside the one pinned at its bootstrap."""

    pinned: str
    presented: str

    @property
    def changed(self) -> bool:
        return self.presented != self.pinned


def check_host_key(host: Host, port: int = 22) -> HostKeyCheck:
    """Scan the key ``host`` presents now (to show; a repair pins a new one only when a person
    passes it back as ``fingerprint``)."""
    try:
        presented = bootstrap.scan_host_key(host.address, port=port)
    except bootstrap.BootstrapError as exc:
        raise Refused(str(exc), status=400, field="address") from None
    return HostKeyCheck(host.ssh_fingerprint, presented)


def repair_host(
    host: Host, password: str, *, actor: Any, fingerprint: str = "", port: int = 22
) -> Job:
    """Run the SSH bootstrap again on ``host`` (its row, guests and history stay). The pinned
    host key is used unless ``fingerprint`` is given: then that key, and only it, is accepted
    and pinned from now on (the API's ``fingerprint``, the page's "accept the new host key"
    after a check; an event records the change)."""
    if fingerprint and not (fingerprint.startswith("SHA256:") and len(fingerprint) == 50):
        raise Refused(
            "The host key fingerprint must look like SHA256:<43 characters>.",
            status=400,
            field="fingerprint",
        )
    spec = bootstrap.HostSpec(
        name=host.name,
        address=host.address,
        password=password,
        fingerprint=fingerprint or host.ssh_fingerprint,
        port=port,
    )
    if not spec.fingerprint:
        raise Refused(
            f"{host.name} has no pinned host key: give its fingerprint (scan it first).",
            status=400,
            field="fingerprint",
        )
    previous = host.ssh_fingerprint
    job = _start(host.cluster, [spec], actor=actor)
    if previous and spec.fingerprint != previous:
        record(
            actor=actor_name(actor),
            verb="host-key",
            obj=host,
            cluster=host.cluster,
            result="info",
            message=f"accepted a new SSH host key {spec.fingerprint} (was {previous}) "
            f"for the repair, job {job.pk}",
        )
    return job


def _join_through(cluster: Cluster, member: str, password: str) -> bootstrap.HostSpec:
    """The member of ``cluster``'s cluster stack the new hosts join through (the corosync key
    is read there): refused while a host is not online, or without its root password."""
    hosts = list(Host.objects.filter(cluster=cluster).order_by("name"))
    away = [h for h in hosts if h.state not in (HostState.ONLINE, HostState.MAINTENANCE)]
    if not hosts or away:
        raise Refused(
            f"Cluster {cluster.name} has shared storage and "
            + ", ".join(f"{h.name} is {h.get_state_display().lower()}" for h in away)
            + ": every host must be online to take new hosts into corosync's membership "
            "(bring it back, or remove it first).",
            field="hosts",
        )
    chosen = next((h for h in hosts if h.name == member), None) if member else hosts[0]
    if chosen is None:
        raise Refused(
            f"{member} is not a host of cluster {cluster.name}.", status=400, field="member"
        )
    if not password:
        raise Refused(
            f"Cluster {cluster.name} has shared storage: give the root password of "
            f"{chosen.name} (an existing host), to read the cluster's corosync key there. "
            "Haven keeps neither the key nor the password.",
            status=400,
            field="member_password",
        )
    if not chosen.ssh_fingerprint:
        raise Refused(
            f"{chosen.name} has no pinned SSH host key: repair it first, or name another host.",
            status=400,
            field="member",
        )
    return bootstrap.HostSpec(chosen.name, chosen.address, password, chosen.ssh_fingerprint)


def _start(
    cluster: Cluster,
    specs: list[bootstrap.HostSpec],
    *,
    actor: Any,
    join: bootstrap.HostSpec | None = None,
    then: Callable[[int], object] | None = None,
) -> Job:
    try:
        return bootstrap.start_bootstrap(
            cluster.name, specs, actor=actor, shared_storage=join is not None, join=join, then=then
        )
    except bootstrap.BootstrapError as exc:
        raise Refused(str(exc), status=400, field="hosts") from None


def add_missing_journals(job_id: int, cluster_id: int, *, actor: Any) -> list[Job]:
    """After a successful add: with clustered storage, ``join_hosts`` (journals, then the
    VGs and GFS2 mounts on the new hosts); else one ``add_journals`` job per GFS2 file system
    of the cluster with fewer journals than hosts (run on a host where it is mounted: the
    oldest host)."""
    from console.storage import services as storage
    from console.storage.models import Filesystem

    job = Job.objects.get(pk=job_id)
    if job.status != JobStatus.SUCCEEDED:
        return []
    if job.params.get("join"):
        new = list(Host.objects.filter(cluster_id=cluster_id, name__in=job.params["hosts"]))
        joined = storage.join_hosts(job.cluster, new, actor=actor) if job.cluster else None
        return [joined] if joined is not None else []
    hosts = list(Host.objects.filter(cluster_id=cluster_id).order_by("pk"))
    out = []
    for fs in Filesystem.objects.filter(logical_volume__volume_group__cluster_id=cluster_id):
        missing = len(hosts) - fs.journals
        if missing > 0 and hosts:
            out.append(storage.add_journals(hosts[0], fs, missing, actor=actor))
    return out


# --- remove -----------------------------------------------------------------------------------


def guests_bound_to(host: Host) -> list[str]:
    """Guests the HA engine has running, starting, moving or possibly still running on
    ``host`` (its own status, not the rows it copies to)."""
    from console.engine.tick import OCCUPYING
    from console.ha.snapshot import stored_status

    status = stored_status(host.cluster_id)

    bound = []
    for name, s in sorted(status.services.items()):
        if (
            (s.state in OCCUPYING and s.node == host.name)
            or s.target == host.name
            or host.name in s.suspects
        ):
            bound.append(name)
    return bound


def _confirmed_down(host: Host) -> bool:
    if host.state in DOWN_STATES:
        return True
    ack, beat = host.acknowledged_down_at, host.last_heartbeat
    return ack is not None and (beat is None or ack > beat)


def _why_not_removable(host: Host) -> str:
    """'' when ``host`` may be removed now, else why not (what to do first)."""
    bound = guests_bound_to(host)
    if bound:
        return (
            f"guests run on {host.name} ({', '.join(bound)}): put it in maintenance first "
            "(its guests move away live), then remove it"
        )
    reachable = host.state in (HostState.ONLINE, HostState.MAINTENANCE)
    if not reachable and not _confirmed_down(host):
        return (
            f"{host.name} is silent but not confirmed down: wait for its fence to succeed, "
            "or acknowledge it is down, then remove it"
        )
    return ""


def remove_host(host: Host, *, actor: Any, password: str = "") -> Job:
    """Remove ``host`` from its cluster (module docstring); the job (finished at once when no
    SSH is needed, else it runs after the commit)."""
    who = actor_name(actor)
    cluster = host.cluster
    why = _why_not_removable(host)
    if why:
        record(
            actor=who, verb="remove-host", obj=host, cluster=cluster, result="refused", message=why
        )
        raise Refused(why[0].upper() + why[1:] + ".")
    with transaction.atomic():
        host = Host.objects.select_for_update().get(pk=host.pk)
        if why := _why_not_removable(host):  # changed since: nothing was done
            raise Refused(why[0].upper() + why[1:] + ".")
        reachable = host.state in (HostState.ONLINE, HostState.MAINTENANCE)
        if reachable and not host.maintenance:
            host.maintenance = True  # nothing new lands on it while it is taken apart
            host.save(update_fields=["maintenance"])
        job = jobs.create_job(
            "remove-host",
            [],
            cluster=cluster,
            created_by=actor,
            params={"host": host.name, "uninstall": bool(reachable and password)},
            message=f"{who} removes {host.name} from cluster {cluster.name}",
        )
        job.hosts.add(host)
        kinds = REMOVE_STEPS if reachable and password else REMOVE_STEPS[1:]
        JobStep.objects.bulk_create(
            JobStep(
                job=job,
                seq=i + 1,
                stage=i,
                host=host,
                kind=kind,
                command_id=jobs.new_command_id("remove"),
                # taken now: the dispatcher never sends a console-side step to an agent
                status=StepStatus.DISPATCHED,
                dispatched=timezone.now(),
                args={"address": host.address, "fingerprint": host.ssh_fingerprint},
            )
            for i, kind in enumerate(kinds)
        )
        Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, started=timezone.now())
        record(
            actor=who,
            verb="remove-host",
            obj=host,
            cluster=cluster,
            result="info",
            message=f"job {job.pk}: "
            + ("agent uninstalled over SSH, then " if reachable and password else "")
            + "credentials revoked and the host forgotten",
        )
    job_id = job.pk
    if reachable and password:
        secret = {"password": password}
        name = host.name
        # silent while it is taken apart: announced as a clean shutdown, so it is not fenced
        transaction.on_commit(lambda: _leaving(name, True))
        bootstrap.run_after_commit(run_remove, job_id, secret, "remove-host")
    else:
        run_remove(job_id, {})
    job.refresh_from_db()
    return job


def _leaving(name: str, on: bool) -> None:
    """Announce (or take back) that ``name`` shuts down on purpose, through the store's clean
    shutdown marks (the engine's ``shutting_down``: drained, never fenced); the snapshot reads
    them with the heartbeats, no query of its own."""
    from console.ha.tasks import store

    shared = store()
    if on:
        shared.mark_shutdown(name, shared.clock())
    else:
        shared.clear_shutdown(name)


_UNINSTALL = r"""
set -u
unit=$1; unit_file=$2; pid=$3; env=$4; sup=$5; boot=$6; agents=$7; confdir=$8; stack=$9
name=${10}
if [ "$(cat /proc/1/comm)" = systemd ] && [ -f "$unit_file" ]; then
    systemctl disable --now "$unit" || true
    rm -f "$unit_file"
    systemctl daemon-reload || true
    echo "unit $unit stopped and removed"
fi
if [ -s "$pid" ] && kill -0 "$(cat "$pid")" 2>/dev/null; then
    kill -s TERM -- "-$(cat "$pid")" 2>/dev/null || true
    sleep 1
    kill -s KILL -- "-$(cat "$pid")" 2>/dev/null || true
    echo "supervised agent stopped"
fi
rm -f "$pid" "$env" "$sup" "$boot"
echo "configuration removed from $confdir"
if [ "$stack" = 1 ] && [ "$(cat /proc/1/comm)" = systemd ]; then
    # leave the cluster stack cleanly: GFS2, the shared VGs' lockspaces, dlm, corosync
    umount -a -t gfs2 && echo "gfs2 unmounted" || echo "umount -a -t gfs2 failed"
    vgchange -an -S 'locktype=dlm' >/dev/null 2>&1 || true
    vgchange --lockstop >/dev/null 2>&1 && echo "shared VGs lock-stopped" || true
    systemctl disable --now haven-cluster-join lvmlocks lvmlockd dlm corosync >/dev/null 2>&1 \
        || true
    sed -i '/[[:space:]]gfs2[[:space:]]/d' /etc/fstab
    rm -f /etc/systemd/system/haven-activate-*.service /etc/corosync/corosync.conf \
        /etc/corosync/authkey /etc/systemd/system/haven-cluster-join.service \
        /usr/local/sbin/haven-cluster-join
    systemctl daemon-reload || true
    for u in corosync dlm lvmlockd; do
        if systemctl is-active --quiet "$u"; then echo "STILL ACTIVE: $u"; fi
    done
    echo "cluster stack stopped and disabled; corosync.conf and authkey removed"
fi
[ -d "$agents" ] || exit 0
# The installed versions this host used: its mark goes; a version nobody else uses goes too
# (hosts sharing /opt, as the lab's do, keep theirs). Under the install lock: no bootstrap
# marks or installs a version while it is being removed.
flock "$agents/.install.lock" sh -c '
    agents=$1; name=$2
    for dir in "$agents"/*/; do
        dir=${dir%/}
        [ -e "$dir/.users/$name" ] || continue
        rm -f "$dir/.users/$name"
        left=$(ls -A "$dir/.users")
        if [ -z "$left" ]; then
            rm -rf "$dir"
            echo "removed $dir (no other host uses it)"
        else
            echo "kept $dir: used by" $left
        fi
    done' haven-uninstall-agents "$agents" "$name"
"""


def _uninstall(run: Any) -> dict[str, Any]:
    paths = bootstrap.config_paths(run.name)
    _, out, _ = run.run(
        [
            "sh",
            "-c",
            _UNINSTALL,
            "haven-uninstall",
            f"haven-agent-{run.name}",
            paths["unit"],
            paths["pid"],
            paths["env"],
            paths["supervisor"],
            paths["boot"],
            bootstrap.AGENT_ROOT,
            bootstrap.CONFIG_DIR,
            "1" if shared_storage(run.host.cluster) else "0",
            run.name,
        ],
        what="stopping and uninstalling the agent",
        timeout=600,  # with the cluster stack: umount and dlm's leave take a while (TCG)
    )
    stuck = [line[len("STILL ACTIVE: ") :] for line in out.splitlines()
             if line.startswith("STILL ACTIVE: ")]  # fmt: skip
    if stuck:
        raise bootstrap.BootstrapError(
            f"{run.name} still runs {', '.join(stuck)} after leaving the cluster stack"
        )
    still: list[str] = []
    for _ in range(20):  # SIGKILLed processes are gone within moments
        _, ps, _ = run.run(["ps", "-eo", "args"], check=False, what="ps")
        still = [
            line for line in ps.splitlines() if "-m agent" in line and f"--host {run.name}" in line
        ]
        if not still:
            break
        time.sleep(0.25)
    if still:
        raise bootstrap.BootstrapError(
            f"the agent of {run.name} still runs after the uninstall: {shlex.quote(still[0])}"
        )
    return {"said": [line for line in out.splitlines() if line.strip()]}


def run_remove(job_id: int, secret: dict[str, str]) -> Job:
    """The job's steps, in order: SSH uninstall (when it has that step), then forget."""
    job = Job.objects.get(pk=job_id)
    for step in list(job.steps.select_related("host").order_by("seq")):
        step.refresh_from_db()
        if step.status != StepStatus.DISPATCHED:
            break
        data: dict[str, Any] = {}
        try:
            if step.kind == "remove.agent":
                data = _ssh_uninstall(job, step, secret.pop("password", ""))
            else:
                data = _forget(job, step)
            ok, message = True, ""
        except (bootstrap.BootstrapError, Refused) as exc:
            ok, message = False, str(exc)
        with transaction.atomic():
            later = job.steps.filter(seq__gt=step.seq)
            if not ok:
                later.update(status=StepStatus.SKIPPED)
            jobs.finish_console_step(step, ok=ok, message=message, data=data)
        if not ok:
            if job.params.get("uninstall"):  # it stays: no longer leaving
                _leaving(str(job.params.get("host", "")), False)
            break
    job.refresh_from_db()
    return job


def _ssh_uninstall(job: Job, step: JobStep, password: str) -> dict[str, Any]:
    host = step.host
    assert host is not None
    run = bootstrap._HostRun(
        job=job,
        host=host,
        address=str(step.args["address"]),
        port=22,
        fingerprint=str(step.args["fingerprint"]),
        password=password,
    )
    try:
        bootstrap._connect(run)
        return _uninstall(run)
    finally:
        run.close()


def _forget(job: Job, step: JobStep) -> dict[str, Any]:
    """Under the host's lock: no guest arrived meanwhile; then the row goes (its credentials
    are revoked by the post_delete signal, console/ha/apps.py)."""
    with transaction.atomic():
        host = (
            Host.objects.select_for_update().filter(pk=step.host_id).first()
            if step.host_id is not None
            else None
        )
        if host is None:
            return {"removed": False, "why": "already gone"}
        bound = guests_bound_to(host)
        if bound:
            raise Refused(
                f"guests came to {host.name} meanwhile ({', '.join(bound)}): it stays; "
                "they move away in maintenance, then remove it again"
            )
        name, cluster = host.name, host.cluster
        devices = sorted(host.fence_devices.values_list("name", flat=True))
        host.delete()
        # its heartbeats and marks go too: a host added again under this name starts afresh
        transaction.on_commit(lambda: _forget_reports(name))
        followup = corosync_remove_node(cluster, name, actor=job.created_by)
        record(
            actor=job.by,
            verb="remove-host",
            object_type="host",
            object_name=name,
            cluster=cluster,
            result="ok",
            message="removed: broker credentials revoked"
            + (f", fence devices {', '.join(devices)} deleted" if devices else ""),
        )
    return {
        "removed": True,
        "fence_devices": devices,
        **({"corosync_job": followup.pk} if followup is not None else {}),
    }


def _forget_reports(name: str) -> None:
    from console.ha.tasks import store

    store().forget_host(name)


def corosync_remove_node(cluster: Cluster, name: str, *, actor: Any = None) -> Job | None:
    """A cluster with shared storage: every online host drops ``name`` from its corosync
    membership (corosync.conf without it, then a reload). None without shared storage or
    when no host is online to tell."""
    if not shared_storage(cluster):
        return None
    hosts = list(
        Host.objects.filter(cluster=cluster, state=HostState.ONLINE).exclude(name=name)
        .order_by("name")
    )  # fmt: skip
    if not hosts:
        return None
    return jobs.create_job(
        "corosync-remove-node",
        [jobs.StepSpec.of(h, protocol.CorosyncRemoveNodeArgs(name)) for h in hosts],
        cluster=cluster,
        created_by=actor,
        params={"host": name, "members": [h.name for h in hosts]},
        message=f"drop {name} from the corosync membership of {', '.join(h.name for h in hosts)}",
    )
