"""SSH bootstrap: turn a freshly installed host into a cluster member with its root password.

One job of kind ``bootstrap`` with, per host, four console-side steps:

``bootstrap.connect``    SSH as root with the password, the host key pinned to the fingerprint
                         the person confirmed (``scan_host_key`` shows it first);
``bootstrap.install``    upload the wheelhouse (``var/wheelhouse``, built by ``deploy/setup``)
                         and ``pip install --no-index`` the agent into ``/opt/haven-agent/<ver>/``
                         (built aside and renamed, under ``flock``; no internet on the host);
``bootstrap.configure``  a Redis user of the agent's own, allowed to consume only its queue
                         ``agent.<name>`` and to write only its inbound list ``haven:in:<name>``
                         (console/ha/broker.py), a new sealing key, and the agent's
                         configuration in ``/etc/haven/agent-<name>.env`` (mode 0600);
``bootstrap.register``   start the agent (systemd unit, or a supervised process started by
                         ``/etc/haven/boot-<name>.sh`` where PID 1 is not systemd), wait for its
                         first heartbeat, then apply libvirt's migration settings through
                         normal job steps: over TLS (``HAVEN_MIGRATION_TRANSPORT``, default
                         ``tls``) ``tls_request`` (the agent's key stays on the host; the
                         cluster CA signs its request, console/bootstrap/pki.py), then
                         ``configure_migration`` installs the certificates and switches
                         libvirtd to TLS only; libvirtd is restarted over SSH when anything
                         changed (guests keep running; with plain TCP, as before, a warning
                         says it must be restarted). With systemd also
                         ``haven-drain-<name>.service``, whose stop (every poweroff and
                         reboot) runs ``/etc/haven/shutdown-<name>.sh`` before libvirt stops
                         any guest: the console drains the host live, the hook waits for it
                         (bounded by ``HAVEN_SHUTDOWN_DRAIN_S``, 300 s; agent/shutdown.py).

The steps reach a host through one port, ``RemoteHost`` (run a command, write a file, copy a
file): ``ParamikoHost`` over SSH in production (``ssh_connect``), ``FakeRemoteHost``
(console/ha/fakes.py) in tests (``use_connector``), so the whole bootstrap runs without a
lab (tests/console/test_bootstrap_fake.py).

Why in-process and not a Celery task: the root passwords must never be stored or logged. A
Celery task's arguments travel through Redis (and Celery logs them), so the bootstrap runs in
threads of the process that received the passwords (the web request's, or a test's), after
the job's transaction commits; the passwords live only in that process's memory and are
dropped when each host's SSH session ends. The steps are recorded in the job like every other
step (``jobs.finish_console_step``) but are never sent to an agent: a step is marked taken
(dispatched) before the step before it is finished, so the job dispatcher never sees it pending.

Extra environment for the agents: ``settings.HAVEN_AGENT_ENV`` (a dict, empty by default) is
written into every agent's env file, one ``NAME=value`` line each, and the agent's supervisor
script (``agent-<name>.sh``, which both the boot hook and the systemd unit run) exports those
lines, taken literally (no shell expansion), before it starts the agent. The agent passes its
environment on to the commands it runs, so e.g. ``{"LVM_SYSTEM_DIR": "/srv/lvm"}`` gives LVM a
private configuration (the lab's loop devices). Names must match ``^[A-Z][A-Z0-9_]{0,63}$`` and
not start with ``HAVEN_AGENT_`` (the bootstrap writes those; the broker URL, which holds the
agent's Redis password, is never exported); values are one line. A bad entry fails the
bootstrap before anything runs, without echoing the value.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import secrets
import shlex
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import paramiko
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from agent import shutdown
from agent.protocol import (
    CommandArgs,
    ConfigureMigrationArgs,
    Heartbeat,
    TlsRequestArgs,
    agent_queue,
    inbound_key,
)
from console.bootstrap import cluster_stack
from console.clusters.models import Cluster, Host
from console.core import validators
from console.core.ports import Port
from console.core.services import actor_name
from console.events.services import record
from console.ha import credentials
from console.jobs import services as jobs
from console.jobs.models import FINISHED_STATUSES, Job, JobEvent, JobStatus, JobStep, StepStatus

log = logging.getLogger("haven.bootstrap")

STEP_KINDS = ("bootstrap.connect", "bootstrap.install", "bootstrap.configure", "bootstrap.register")
REPO = Path(__file__).resolve().parents[2]
AGENT_ROOT = "/opt/haven-agent"
CONFIG_DIR = "/etc/haven"
LIBVIRT_URI = "qemu:///system"
CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 300.0
HEARTBEAT_TIMEOUT_S = 30.0
INSTALL_TIMEOUT_S = 300.0  # both overridable in settings: hosts under QEMU TCG (the storage
# lab) need minutes for venv + pip and ~1 min for the agent's first heartbeat
MIGRATION_TIMEOUT_S = 30.0
SHUTDOWN_DRAIN_S = 300.0  # a clean shutdown waits this long at most for its guests to move
AGENT_ENV_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
RESERVED_ENV_PREFIX = "HAVEN_AGENT_"  # the bootstrap's own lines of the env file

_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bootstrap")


class BootstrapError(Exception):
    """A bootstrap step failed; the message says why in plain words (never a secret)."""


@dataclass
class HostSpec:
    """A host to bootstrap. The password is used once, in memory, and never stored."""

    name: str
    address: str
    password: str = field(repr=False)
    fingerprint: str
    port: int = 22


# --- host keys ----------------------------------------------------------------------------


def fingerprint_of(key: paramiko.PKey) -> str:
    """The key's fingerprint as OpenSSH prints it: ``SHA256:<base64 without padding>``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer (timed out)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _check_port(port: int) -> None:
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise BootstrapError(f"{port!r} is not a TCP port (1-65535)")


def scan_host_key(address: str, port: int = 22, timeout: float = 5) -> str:
    """Connect to the host's sshd and return its host key fingerprint, to show and pin."""
    try:
        validators.validate_address(address)
    except ValidationError as exc:
        raise BootstrapError(exc.messages[0]) from None
    _check_port(port)
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError as exc:
        raise BootstrapError(f"host unreachable: {address}:{port}: {_reason(exc)}") from None
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        transport.start_client(timeout=timeout)
        return fingerprint_of(transport.get_remote_server_key())
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise BootstrapError(
            f"no SSH server answered at {address}:{port}: {_reason(exc)}"
        ) from None
    finally:
        transport.close()


class _PinnedKey(paramiko.MissingHostKeyPolicy):
    """Accept exactly the fingerprint the person confirmed, nothing else."""

    def __init__(self, host: str, expected: str) -> None:
        self.host, self.expected = host, expected

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        got = fingerprint_of(key)
        if not secrets.compare_digest(got, self.expected):
            raise BootstrapError(
                f"host key mismatch for {self.host}: expected {self.expected}, got {got}"
            )


# --- starting a bootstrap -------------------------------------------------------------------


def _validate(cluster_name: str, hosts: list[HostSpec]) -> None:
    checks: list[tuple[Callable[[str], None], str]] = [
        (validators.validate_cluster_name, cluster_name)
    ]
    for h in hosts:
        checks += [(validators.validate_hostname, h.name), (validators.validate_address, h.address)]
    for check, value in checks:
        try:
            check(value)
        except ValidationError as exc:
            raise BootstrapError(exc.messages[0]) from None
    if not hosts:
        raise BootstrapError("name at least one host to bootstrap")
    agent_env()
    names = [h.name for h in hosts]
    if len(set(names)) != len(names):
        raise BootstrapError("each host may appear only once")
    for h in hosts:
        _check_port(h.port)
        if not h.fingerprint.startswith("SHA256:") or len(h.fingerprint) != 50:
            raise BootstrapError(
                f"the host key fingerprint of {h.name} must look like SHA256:<43 characters>"
            )
        if not h.password:
            raise BootstrapError(f"give the root password of {h.name}")


def start_bootstrap(
    cluster_name: str,
    hosts: list[HostSpec],
    *,
    actor: Any,
    shared_storage: bool = False,
    join: HostSpec | None = None,
    then: Callable[[int], object] | None = None,
) -> Job:
    """Create the cluster (if missing), the hosts and the bootstrap job; run it in this process
    once the transaction commits. Returns the job at once; follow its steps and events.
    ``join``: an existing member of the cluster stack (its root password), for new hosts
    joining a formed one (console/bootstrap/cluster_stack.py). ``then(job_id)`` runs in the
    same thread once the job has finished, whatever its outcome (a crash in it is logged)."""
    job = create_bootstrap_job(
        cluster_name, hosts, actor=actor, shared_storage=shared_storage, join=join
    )
    passwords = {h.name: h.password for h in hosts}
    if join is not None:
        passwords[join.name] = join.password
    job_id = job.pk

    def run(job_id: int, secrets: dict[str, str]) -> None:
        run_bootstrap(job_id, secrets)
        if then is not None:
            try:
                then(job_id)
            except Exception:
                log.exception("what follows bootstrap job %s crashed", job_id)

    run_after_commit(run, job_id, passwords, "bootstrap")
    return job


def create_bootstrap_job(
    cluster_name: str,
    hosts: list[HostSpec],
    *,
    actor: Any,
    shared_storage: bool = False,
    join: HostSpec | None = None,
) -> Job:
    """The cluster, host rows and the job with its steps (nothing runs yet)."""
    _validate(cluster_name, hosts)
    if join is not None:
        _validate(cluster_name, [join])
        if not shared_storage or join.name in [h.name for h in hosts]:
            raise BootstrapError("the member to join through must be another host of the stack")
    who = actor_name(actor)
    with transaction.atomic():
        cluster, _ = Cluster.objects.get_or_create(name=cluster_name)
        member = None
        if join is not None:
            member = Host.objects.filter(cluster=cluster, name=join.name).first()
            if member is None:
                raise BootstrapError(f"{join.name} is not a host of cluster {cluster_name}")
        rows: list[Host] = []
        for spec in hosts:
            host = Host.objects.filter(name=spec.name).first()
            if host is not None and host.cluster_id != cluster.pk:
                raise BootstrapError(f"{spec.name} already belongs to cluster {host.cluster}")
            if host is None:
                host = Host(cluster=cluster, name=spec.name)
            host.address, host.ssh_fingerprint = spec.address, spec.fingerprint
            host.save()
            rows.append(host)
        job = jobs.create_job(
            "bootstrap",
            [],
            cluster=cluster,
            created_by=actor,
            params={
                "cluster": cluster.name,
                "hosts": [h.name for h in hosts],
                "shared_storage": shared_storage,
                **({"join": {"member": join.name}} if join is not None else {}),
            },
            message=(
                f"{who} forms cluster {cluster.name} from "
                if join is None
                else f"{who} adds to cluster {cluster.name} (corosync key from {join.name}) "
            )
            + ", ".join(h.name for h in hosts)
            + " over SSH",
        )
        job.hosts.add(*rows)
        kinds = STEP_KINDS + cluster_stack.step_kinds(shared_storage)  # corosync, dlm, lvmlockd
        JobStep.objects.bulk_create(
            JobStep(
                job=job,
                seq=i * len(kinds) + stage + 1,
                stage=stage,
                host=host,
                kind=kind,
                command_id=jobs.new_command_id("boot"),
                args={"address": spec.address, "port": spec.port, "fingerprint": spec.fingerprint},
            )
            for i, (spec, host) in enumerate(zip(hosts, rows, strict=True))
            for stage, kind in enumerate(kinds)
        )
        if join is not None and member is not None:  # read the key there, then extend
            JobStep.objects.bulk_create(
                JobStep(
                    job=job,
                    seq=len(hosts) * len(kinds) + stage + 1,
                    stage=stage,
                    host=member,
                    kind=kind,
                    command_id=jobs.new_command_id("boot"),
                    args={
                        "address": member.address,
                        "port": join.port,
                        "fingerprint": member.ssh_fingerprint,
                    },
                )
                for stage, kind in enumerate(cluster_stack.JOIN_STEP_KINDS)
            )
        record(
            actor=who,
            verb="bootstrap",
            obj=cluster,
            cluster=cluster,
            result="info",
            message=f"job {job.pk}: " + ", ".join(f"{h.name} ({h.address})" for h in hosts),
        )
    return job


def run_after_commit(
    run: Callable[[int, dict[str, str]], object], job_id: int, secrets: dict[str, str], what: str
) -> None:
    """``run(job_id, secrets)`` in the bootstrap's threads once the transaction commits (a job
    that needs root passwords: they live in this process only, never in the database). A crash
    is logged; the secrets are forgotten and the thread's database connection closed after."""

    def in_thread() -> None:
        try:
            run(job_id, secrets)
        except Exception:
            log.exception("%s job %s crashed", what, job_id)
        finally:
            secrets.clear()
            connection.close()

    transaction.on_commit(lambda: _pool.submit(in_thread))


# --- running it -----------------------------------------------------------------------------


class RemoteHost(Protocol):
    """A root shell on a host being bootstrapped: the one port the bootstrap's steps use.

    ``ParamikoHost`` is the real one (SSH with the root password, the host key pinned);
    ``FakeRemoteHost`` (console/ha/fakes.py) plays a host in this process. Transport
    failures raise ``BootstrapError`` with the reason in plain words."""

    def run(self, argv: list[str], *, timeout: float) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) of ``argv``, quoted: no shell interprets a value."""

    def write_file(self, path: str, text: str, mode: int) -> None:
        """Write a file with ``mode`` set before any content is written, renamed into place."""

    def put(self, local: Path, remote: str) -> None:
        """Copy a local file to the host."""

    def close(self) -> None: ...


#: how a bootstrap reaches a host: (name, address, port, root password, pinned fingerprint)
Connector = Callable[[str, str, int, str, str], RemoteHost]


class ParamikoHost:
    """``RemoteHost`` over SSH (paramiko)."""

    def __init__(self, name: str, client: paramiko.SSHClient) -> None:
        self.name, self.client = name, client

    def run(self, argv: list[str], *, timeout: float) -> tuple[int, str, str]:
        try:
            _in, out, err = self.client.exec_command(shlex.join(argv), timeout=timeout)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
            return out.channel.recv_exit_status(), stdout, stderr
        except (paramiko.SSHException, OSError) as exc:
            raise BootstrapError(_reason(exc)) from None

    def write_file(self, path: str, text: str, mode: int) -> None:
        tmp = f"{path}.tmp-{secrets.token_hex(4)}"
        with self.client.open_sftp() as sftp:
            with sftp.open(tmp, "w") as f:
                sftp.chmod(tmp, mode)
                f.write(text.encode())
            sftp.posix_rename(tmp, path)

    def put(self, local: Path, remote: str) -> None:
        with self.client.open_sftp() as sftp:
            sftp.put(str(local), remote)

    def close(self) -> None:
        self.client.close()


def ssh_connect(name: str, address: str, port: int, password: str, fingerprint: str) -> RemoteHost:
    """SSH as root with the password, accepting exactly the pinned host key."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(_PinnedKey(name, fingerprint))
    try:
        client.connect(
            address,
            port=port,
            username="root",
            password=password,
            look_for_keys=False,
            allow_agent=False,
            timeout=CONNECT_TIMEOUT_S,
            banner_timeout=CONNECT_TIMEOUT_S,
            auth_timeout=CONNECT_TIMEOUT_S,
        )
    except BootstrapError:
        client.close()
        raise
    except paramiko.AuthenticationException:
        client.close()
        raise BootstrapError(f"wrong root password for {name}") from None
    except paramiko.ssh_exception.NoValidConnectionsError as exc:
        client.close()
        reasons = {_reason(e) for e in exc.errors.values()}
        raise BootstrapError(f"{name} unreachable: {', '.join(sorted(reasons))}") from None
    except (OSError, EOFError) as exc:
        client.close()
        raise BootstrapError(f"{name} unreachable: {_reason(exc)}") from None
    except paramiko.SSHException as exc:
        client.close()
        raise BootstrapError(f"SSH to {name} failed: {_reason(exc)}") from None
    return ParamikoHost(name, client)


_connector: Port[Connector] = Port(ssh_connect)
#: reach hosts with a connector instead of SSH (tests: ``FakeRemoteHost``)
use_connector = _connector.use


@dataclass
class _HostRun:
    """One host's bootstrap in progress: its root shell and what the steps learn."""

    job: Job
    host: Host
    address: str
    port: int
    fingerprint: str
    password: str = field(repr=False)
    remote: RemoteHost | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.host.name

    def close(self) -> None:
        self.password = ""
        if self.remote is not None:
            self.remote.close()
            self.remote = None

    def run(
        self,
        argv: list[str],
        *,
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT_S,
        what: str = "",
    ) -> tuple[int, str, str]:
        """Run argv on the host (quoted, no shell interpretation of values)."""
        assert self.remote is not None
        try:
            code, stdout, stderr = self.remote.run(argv, timeout=timeout)
        except BootstrapError as exc:
            raise BootstrapError(f"{self.name}: {what or argv[0]} failed: {exc}") from None
        if check and code != 0:
            tail = (stderr.strip() or stdout.strip()).splitlines()[-3:]
            raise BootstrapError(
                f"{what or argv[0]} failed on {self.name} (exit {code}): " + " / ".join(tail)
            )
        return code, stdout, stderr

    def write_file(self, path: str, text: str, mode: int) -> None:
        """Write a file on the host with `mode` set before any content is written."""
        assert self.remote is not None
        self.remote.write_file(path, text, mode)


def run_bootstrap(job_id: int, passwords: dict[str, str]) -> Job:
    """Run the job's steps now (one thread per host); returns the finished job."""
    job = Job.objects.get(pk=job_id)
    steps = list(job.steps.select_related("host").order_by("seq"))
    by_host: dict[str, list[JobStep]] = {}
    for step in steps:
        assert step.host is not None
        by_host.setdefault(step.host.name, []).append(step)
    with transaction.atomic():
        # Every host's first step is taken now: the dispatcher must never send it to an agent.
        JobStep.objects.filter(pk__in=[s[0].pk for s in by_host.values()]).update(
            status=StepStatus.DISPATCHED, dispatched=timezone.now()
        )
        Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, started=timezone.now())
    runs = []
    for name, host_steps in by_host.items():
        first = host_steps[0]
        assert first.host is not None
        runs.append(
            (
                _HostRun(
                    job=job,
                    host=first.host,
                    address=str(first.args["address"]),
                    port=int(first.args.get("port", 22)),
                    fingerprint=str(first.args["fingerprint"]),
                    password=passwords.get(name, ""),
                ),
                host_steps,
            )
        )
    with ThreadPoolExecutor(max_workers=len(runs) or 1, thread_name_prefix="bootstrap-host") as ex:
        for future in [ex.submit(_pipeline, run, host_steps) for run, host_steps in runs]:
            future.result()
    cluster_stack.forget(job.pk)
    job.refresh_from_db()
    return job


def _pipeline(run: _HostRun, steps: list[JobStep]) -> None:
    try:
        for i, step in enumerate(steps):
            step.refresh_from_db()
            if step.status != StepStatus.DISPATCHED:
                return  # skipped: another host's step failed the job
            jobs.add_event(
                run.job, f"{step.kind} on {run.name}: started", host=run.host, step=step.kind
            )
            started = time.monotonic()
            try:
                data = STEPS[step.kind](run)
                ok, message = True, ""
            except BootstrapError as exc:
                ok, data, message = False, {}, str(exc)
            except Exception as exc:  # a bug: say so, without locals (they hold the password)
                log.error("bootstrap step %s on %s crashed: %r", step.kind, run.name, exc)
                ok, data, message = False, {}, f"{step.kind} on {run.name} crashed: {exc!r}"
            data = {**data, "duration_s": round(time.monotonic() - started, 3)}
            with transaction.atomic():
                jobs.lock_jobs([step.job_id])  # the job before its steps, as every writer
                if ok and i + 1 < len(steps):
                    nxt = steps[i + 1]
                    JobStep.objects.filter(pk=nxt.pk, status=StepStatus.PENDING).update(
                        status=StepStatus.DISPATCHED, dispatched=timezone.now()
                    )
                jobs.finish_console_step(step, ok=ok, message=message, data=data)
            if not ok:
                log.warning("bootstrap of %s: %s", run.name, message)
                return
    finally:
        run.close()
        close_old_connections()
        connection.close()


# --- the steps ------------------------------------------------------------------------------


def _connect(run: _HostRun) -> dict[str, Any]:
    try:
        remote = _connector.get()(run.name, run.address, run.port, run.password, run.fingerprint)
    finally:
        run.password = ""  # used once
    run.remote = remote
    _, uid, _ = run.run(["id", "-u"], what="id -u")
    if uid.strip() != "0":
        raise BootstrapError(
            f"logged in to {run.name} as uid {uid.strip()}, not root: the bootstrap needs root"
        )
    _, hostname, _ = run.run(["hostname"], what="hostname")
    _, kernel, _ = run.run(["uname", "-r"], what="uname")
    run.facts.update(hostname=hostname.strip(), kernel=kernel.strip())
    return {"fingerprint": run.fingerprint, **run.facts}


_CHECK_PYTHON = "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"
_CHECK_LIBVIRT = (
    "import ctypes.util, shutil, sys; "
    "sys.exit(0 if shutil.which('libvirtd', path='/usr/sbin:/usr/bin:/sbin:/bin') "
    "and ctypes.util.find_library('virt') else 1)"
)
# Which hosts use an installed version: one empty file per host in <version>/.users/, made
# under the install lock (hosts may share /opt, as the lab's do); the uninstall
# (console/operations/membership.py) removes its own and the version once nobody is left.
USERS_DIR = ".users"
# Positional arguments only: $1 target dir, $2 host name. Runs under flock.
_MARK_USER = r"""
set -eu
[ -f "$1/.haven-complete" ] || exit 1
mkdir -p "$1/.users"
: >"$1/.users/$2"
"""
# Positional arguments only: $1 target dir, $2 wheel dir, $3 requirement, $4 host name.
# Runs under flock. A newer agent version starts from a copy of the newest complete install
# (its dependencies are then already there: pip installs only what changed; the copy's users
# are not the new version's) instead of a new venv, whose ensurepip alone takes minutes on a
# slow host; a fresh venv when that copy does not work.
_INSTALL = r"""
set -eu
target=$1; wheels=$2; spec=$3; user=$4
if [ -f "$target/.haven-complete" ]; then
    mkdir -p "$target/.users"; : >"$target/.users/$user"; echo present; exit 0
fi
rm -rf "$target"
root=$(dirname "$target")
build=$(mktemp -d "$root/.build.XXXXXX")
trap 'rm -rf "$build"' EXIT
install() {
    "$build/bin/python" -m pip install -q --disable-pip-version-check --no-index \
        --find-links "$wheels" "$spec" &&
    "$build/bin/python" -c 'import agent.worker, celery, libvirt, cryptography.fernet'
}
prev=$(ls -td "$root"/*/.haven-complete 2>/dev/null | head -n 1 || true)
if [ -n "$prev" ] && cp -a "$(dirname "$prev")/." "$build/" && rm -f "$build/.haven-complete" \
        && rm -rf "$build/.users" && install; then
    echo "upgraded a copy of $(dirname "$prev")"
else
    rm -rf "$build" && mkdir "$build"
    python3 -m venv "$build"
    install
fi
touch "$build/.haven-complete"
mkdir -p "$build/.users"; : >"$build/.users/$user"
mv -T "$build" "$target"
trap - EXIT
echo installed
"""


def wheelhouse() -> Path:
    return Path(getattr(settings, "HAVEN_WHEELHOUSE", settings.VAR_DIR / "wheelhouse"))


_wheel_lock = threading.Lock()


def agent_wheel() -> tuple[str, list[Path]]:
    """(agent version, wheel files): the agent's wheel is rebuilt when its sources changed."""
    house = wheelhouse()
    with _wheel_lock:
        proc = subprocess.run(
            [
                sys.executable,
                str(REPO / "deploy" / "wheelhouse.py"),
                "--agent-only",
                "--dest",
                str(house),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    if proc.returncode != 0:
        raise BootstrapError(f"cannot build the agent wheel: {proc.stderr.strip()[-300:]}")
    version = proc.stdout.strip()
    wheels = sorted(house.glob("*.whl"))
    if not any(w.name.startswith("celery-") for w in wheels):
        raise BootstrapError(
            f"the wheelhouse {house} lacks the agent's requirements: run deploy/setup"
        )
    return version, wheels


def install_dir(version: str) -> str:
    return f"{AGENT_ROOT}/{version.replace('+', '-')}"


def _install(run: _HostRun) -> dict[str, Any]:
    code, out, _ = run.run(["python3", "-c", _CHECK_PYTHON], check=False, what="python3")
    if code != 0:
        raise BootstrapError(
            f"python3 with venv is not installed on {run.name}: apt-get install python3-venv"
        )
    code, _, _ = run.run(["python3", "-c", _CHECK_LIBVIRT], check=False, what="libvirt check")
    if code != 0:
        raise BootstrapError(
            f"libvirt is not installed on {run.name}: apt-get install libvirt-daemon-system"
        )
    version, wheels = agent_wheel()
    target = install_dir(version)
    run.facts.update(python=out.strip(), agent_version=version, agent_dir=target)
    lock = f"{AGENT_ROOT}/.install.lock"
    code, _, _ = run.run(
        ["flock", lock, "sh", "-c", _MARK_USER, "haven-mark", target, run.name],
        check=False,
        what="marking the installed agent used",
    )
    if code == 0:  # installed already (by this host or another on the same file system)
        return {"version": version, "path": target, "installed": False}
    run.run(["mkdir", "-p", AGENT_ROOT], what="mkdir")
    _, tmp, _ = run.run(["mktemp", "-d", "/tmp/haven-wheels.XXXXXX"], what="mktemp")
    tmp = tmp.strip()
    try:
        assert run.remote is not None
        for wheel in wheels:
            run.remote.put(wheel, f"{tmp}/{wheel.name}")
        _, out, _ = run.run(
            [
                "flock",
                f"{AGENT_ROOT}/.install.lock",
                "sh",
                "-c",
                _INSTALL,
                "haven-install",
                target,
                tmp,
                f"haven-agent=={version}",
                run.name,
            ],
            what="installing the agent",
            timeout=float(
                getattr(settings, "HAVEN_BOOTSTRAP_INSTALL_TIMEOUT_S", INSTALL_TIMEOUT_S)
            ),
        )
    finally:
        run.run(["rm", "-rf", tmp], check=False, what="cleanup")
    return {"version": version, "path": target, "installed": out.strip().endswith("installed")}


def agent_broker_url(user: str, password: str) -> str:
    """The broker URL as the host sees it (HAVEN_AGENT_BROKER_URL, default REDIS_URL)."""
    base = getattr(settings, "HAVEN_AGENT_BROKER_URL", "") or os.environ.get(
        "HAVEN_AGENT_BROKER_URL", settings.REDIS_URL
    )
    parts = urllib.parse.urlsplit(base)
    netloc = f"{urllib.parse.quote(user)}:{urllib.parse.quote(password)}@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redacted_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def agent_env() -> dict[str, str]:
    """``settings.HAVEN_AGENT_ENV``, checked (see the module docstring); values never echoed."""
    raw: Any = getattr(settings, "HAVEN_AGENT_ENV", None) or {}
    if not isinstance(raw, Mapping):
        raise BootstrapError("HAVEN_AGENT_ENV must be a dict of variable names to values")
    env: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not AGENT_ENV_NAME_RE.match(name):
            raise BootstrapError(
                f"HAVEN_AGENT_ENV: {name!r} is not a variable name "
                "(capital letters, digits and _, starting with a letter, at most 64)"
            )
        if name.startswith(RESERVED_ENV_PREFIX):
            raise BootstrapError(
                f"HAVEN_AGENT_ENV: {name} is reserved (the bootstrap writes {RESERVED_ENV_PREFIX}*)"
            )
        if not isinstance(value, str) or any(c in value for c in "\n\r\0"):
            raise BootstrapError(f"HAVEN_AGENT_ENV: the value of {name} must be one line of text")
        env[name] = value
    return dict(sorted(env.items()))


def agent_env_file(
    host: str, broker_url: str, extra: Mapping[str, str], *, seal_key: str = ""
) -> str:
    """The text of ``agent-<host>.env``: the agent's own settings, then the extra environment."""
    lines = [
        "# Haven agent configuration, written by the console's SSH bootstrap (secret: 0600).",
        f"HAVEN_AGENT_HOST={host}",
        f"HAVEN_AGENT_LIBVIRT_URI={LIBVIRT_URI}",
        f"HAVEN_AGENT_BROKER={broker_url}",
    ]
    if seal_key:
        lines.append(f"HAVEN_AGENT_SEAL_KEY={seal_key}")
    if extra:
        lines.append(f"# Extra environment (HAVEN_AGENT_ENV), exported by agent-{host}.sh:")
        lines += [f"{name}={value}" for name, value in extra.items()]
    return "\n".join(lines) + "\n"


def config_paths(host: str) -> dict[str, str]:
    return {
        "env": f"{CONFIG_DIR}/agent-{host}.env",
        "supervisor": f"{CONFIG_DIR}/agent-{host}.sh",
        "boot": f"{CONFIG_DIR}/boot-{host}.sh",
        "log": f"/var/log/haven-agent-{host}.log",
        "pid": f"/run/haven-agent-{host}.pid",
        "unit": f"/etc/systemd/system/haven-agent-{host}.service",
        "shutdown": f"{CONFIG_DIR}/shutdown-{host}.sh",
        "drain_unit": f"/etc/systemd/system/{shutdown.unit_name(host)}",
    }


def _supervisor_script(host: str, agent_dir: str) -> str:
    paths = config_paths(host)
    argv = [
        f"{agent_dir}/bin/python",
        "-m",
        "agent",
        "--broker-file",
        paths["env"],
        "--host",
        host,
        "--libvirt-uri",
        LIBVIRT_URI,
    ]
    return (
        "#!/bin/sh\n"
        f"# Haven agent of {host}, written by the console's SSH bootstrap. Without systemd this\n"
        "# loop is the supervisor: it restarts the agent a second after it exits.\n"
        "# First the extra environment of the env file, each line taken literally; its\n"
        "# HAVEN_AGENT_* lines (the broker URL holds a password) are not exported.\n"
        'while IFS= read -r line || [ -n "$line" ]; do\n'
        "    case $line in\n"
        "        HAVEN_AGENT_*) ;;\n"
        '        [A-Z]*=*) export "$line" ;;\n'
        "    esac\n"
        f"done < {shlex.quote(paths['env'])}\n"
        "while :; do\n"
        f"    {shlex.join(argv)}\n"
        "    sleep 1\n"
        "done\n"
    )


def _boot_script(host: str) -> str:
    """`boot-NAME.sh [restart]`: start the supervised agent unless it runs (restart: anew)."""
    p = config_paths(host)
    pid, log_file, sup = shlex.quote(p["pid"]), shlex.quote(p["log"]), shlex.quote(p["supervisor"])
    return (
        "#!/bin/sh\n"
        f"# Starts the Haven agent of {host} at boot (the lab's host init runs this) or on\n"
        "# `restart` from the bootstrap; detached from the caller in its own session.\n"
        f'if [ -s {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; then\n'
        '    [ "${1:-}" = restart ] || exit 0\n'
        f'    kill -s TERM -- "-$(cat {pid})" 2>/dev/null || true\n'
        "    sleep 1\n"
        f'    kill -s KILL -- "-$(cat {pid})" 2>/dev/null || true\n'
        "fi\n"
        f"setsid {sup} >>{log_file} 2>&1 </dev/null &\n"
        f"echo $! >{pid}\n"
    )


def _shutdown_hook(host: str, agent_dir: str) -> str:
    """``shutdown-NAME.sh``: a clean shutdown asks the console to drain the host first and
    waits for it, bounded (agent/shutdown.py); the systemd drain unit runs it, and so may any
    other init's shutdown path."""
    p = config_paths(host)
    argv = [
        f"{agent_dir}/bin/python",
        "-m",
        "agent.shutdown",
        "--broker-file",
        p["env"],
        "--host",
        host,
        "--libvirt-uri",
        LIBVIRT_URI,
        "--timeout",
        f"{shutdown_drain_s():g}",
    ]
    return (
        "#!/bin/sh\n"
        f"# Before {host} shuts down: the console live-migrates its guests away; this waits\n"
        "# for it (bounded), then the shutdown goes on. Written by the console's bootstrap.\n"
        f"exec {shlex.join(argv)} >>{shlex.quote(p['log'])} 2>&1\n"
    )


def shutdown_drain_s() -> float:
    """How long a clean shutdown waits for its guests to move away (``HAVEN_SHUTDOWN_DRAIN_S``)."""
    return float(getattr(settings, "HAVEN_SHUTDOWN_DRAIN_S", SHUTDOWN_DRAIN_S))


#: what the drain unit is ordered after, so that at shutdown it stops before all of them (stop
#: order is the reverse of start order): libvirt and the guests' machine scopes (ordered before
#: virt-guest-shutdown.target, which the unit pulls in: without libvirt-guests enabled nothing
#: else starts it, and systemd then stops the guests' scopes at once, in parallel with the
#: drain), and the shared storage the guests' disks are on (the cluster stack; the GFS2 mounts
#: are ordered before the unit by the agent, agent/storage.py)
DRAIN_AFTER = (
    "network-online.target",
    "libvirtd.service",
    "libvirt-guests.service",
    "virt-guest-shutdown.target",
    "corosync.service",
    "dlm.service",
    "lvmlockd.service",
    cluster_stack.JOIN_UNIT_NAME,
)


def drain_unit(host: str, hook: str = "") -> str:
    """``haven-drain-NAME.service``: started at boot doing nothing; stopping it (every
    poweroff and reboot) runs the drain hook. Ordered after libvirt, the guests' scopes, the
    cluster stack and the agent (``DRAIN_AFTER``), so at shutdown it stops before them: the
    guests move away live before libvirt or systemd stops any, the agent still runs the
    migrations, and their disks stay reachable meanwhile."""
    hook = hook or config_paths(host)["shutdown"]
    return (
        "[Unit]\n"
        f"Description=Haven: drain {host} by live migration before a shutdown\n"
        "Wants=network-online.target virt-guest-shutdown.target\n"
        f"After={' '.join(DRAIN_AFTER)} haven-agent-{host}.service\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        "ExecStart=/bin/true\n"
        f"ExecStop={hook}\n"
        f"TimeoutStopSec={int(shutdown_drain_s()) + 30}\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


def _unit(host: str) -> str:
    return (
        "[Unit]\n"
        f"Description=Haven agent of {host}\n"
        "After=network-online.target libvirtd.service\n\n"
        "[Service]\n"
        f"ExecStart={config_paths(host)['supervisor']}\n"
        "Restart=always\nRestartSec=1\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


def _configure(run: _HostRun) -> dict[str, Any]:
    agent_dir = run.facts.get("agent_dir") or install_dir(agent_wheel()[0])
    try:
        issued = credentials.issue(run.name)
    except Exception as exc:
        raise BootstrapError(f"cannot create the Redis user of {run.name}: {exc}") from None
    user = issued.user
    url = agent_broker_url(user, issued.password)
    extra = agent_env()
    paths = config_paths(run.name)
    run.run(["mkdir", "-p", "-m", "0700", CONFIG_DIR], what="mkdir")
    run.write_file(
        paths["env"],
        agent_env_file(run.name, url, extra, seal_key=issued.seal_key),
        stat.S_IRUSR | stat.S_IWUSR,
    )
    del issued
    run.write_file(paths["supervisor"], _supervisor_script(run.name, agent_dir), 0o700)
    run.write_file(paths["boot"], _boot_script(run.name), 0o700)
    run.write_file(paths["shutdown"], _shutdown_hook(run.name, agent_dir), 0o700)
    return {
        "config": paths["env"],
        "redis_user": user,
        "broker": redacted_url(url),
        "queue": agent_queue(run.name),
        "inbound": inbound_key(run.name),
        "environment": list(extra),
    }


def _register(run: _HostRun) -> dict[str, Any]:
    paths = config_paths(run.name)
    since = time.time()
    _, init, _ = run.run(["cat", "/proc/1/comm"], check=False, what="init check")
    if init.strip() == "systemd":
        # the agent heartbeats once it reaches libvirtd: make sure it runs (after a stopped or
        # half-done restart it may not; its unit pulls in its sockets)
        run.run(["systemctl", "start", "libvirtd.service"], what="systemctl start libvirtd",
                timeout=COMMAND_TIMEOUT_S)  # fmt: skip
        run.write_file(paths["unit"], _unit(run.name), 0o644)
        run.run(["systemctl", "daemon-reload"], what="systemctl daemon-reload")
        run.run(["systemctl", "enable", f"haven-agent-{run.name}"], what="systemctl enable")
        run.run(["systemctl", "restart", f"haven-agent-{run.name}"], what="systemctl restart")
        run.write_file(paths["drain_unit"], drain_unit(run.name), 0o644)
        run.run(["systemctl", "daemon-reload"], what="systemctl daemon-reload")
        drain = shutdown.unit_name(run.name)
        run.run(["systemctl", "enable", "--now", drain], what="systemctl enable the drain unit")
        how = "systemd"
    else:
        run.run([paths["boot"], "restart"], what="starting the agent", timeout=30)
        how = "supervised process"
    beat = _wait_heartbeat(run, since)
    migration = _configure_migration(run)
    return {
        "started_by": how,
        "agent_version": beat.agent_version or None,
        "host_uuid": beat.host_uuid,
        "migration": migration,
    }


def _wait_heartbeat(run: _HostRun, since: float) -> Heartbeat:
    from console.ha.tasks import store as shared_store

    store = shared_store()
    wait_s = float(getattr(settings, "HAVEN_BOOTSTRAP_HEARTBEAT_TIMEOUT_S", HEARTBEAT_TIMEOUT_S))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        report = store.reports([run.name]).get(run.name)
        if report is not None and report.received >= since:
            return report.beat
        time.sleep(0.2)
    _, tail, _ = run.run(["tail", "-n", "5", config_paths(run.name)["log"]], check=False)
    if not tail.strip():  # under systemd the agent's output is in the journal
        _, tail, _ = run.run(
            ["journalctl", "-u", f"haven-agent-{run.name}", "-n", "5", "--no-pager", "-o", "cat"],
            check=False,
        )
    last = tail.strip().splitlines()[-1:] or ["(no log)"]
    raise BootstrapError(
        f"the agent on {run.name} sent no heartbeat within {wait_s:.0f} s; "
        f"its log ends: {last[0][-300:]}"
    )


def migration_transport() -> str:
    """How hosts migrate to each other (``HAVEN_MIGRATION_TRANSPORT``): ``tls`` (default;
    the cluster CA's certificates, console/bootstrap/pki.py) or ``tcp`` (unauthenticated)."""
    transport = str(getattr(settings, "HAVEN_MIGRATION_TRANSPORT", "tls") or "tls")
    if transport not in ("tls", "tcp"):
        raise BootstrapError(f"HAVEN_MIGRATION_TRANSPORT must be tls or tcp, not {transport!r}")
    return transport


def _agent_step(run: _HostRun, args: CommandArgs, what: str) -> dict[str, Any]:
    """One command to the host's agent as a normal job step; its result (or BootstrapError)."""
    job = jobs.create_job(
        args.kind.replace("_", "-"),
        [jobs.StepSpec.of(run.host, args)],
        cluster=run.host.cluster,
        message=f"{what} of {run.name} (bootstrap job {run.job.pk})",
    )
    deadline = time.monotonic() + MIGRATION_TIMEOUT_S
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.status in FINISHED_STATUSES:
            break
        time.sleep(0.2)
    else:
        raise BootstrapError(f"{args.kind} on {run.name} got no answer (job {job.pk})")
    if job.status != JobStatus.SUCCEEDED:
        raise BootstrapError(f"{args.kind} on {run.name} failed: {job.explanation}")
    return {"job": job.pk, **job.steps.get().result}


# Positional argument only: $1 "systemd" or not. Restarts libvirtd so it reads the TLS
# settings and certificates, then waits until it answers again (guests keep running across a
# libvirtd restart). Under systemd with socket activation (Debian's default) the listener is
# libvirtd-tls.socket, and libvirtd-tcp.socket goes; without it (legacy --listen) a restart.
_RESTART_LIBVIRTD = r"""
set -eu
if [ "$1" = systemd ]; then
    if [ "$(systemctl is-enabled libvirtd.socket 2>/dev/null || true)" = enabled ]; then
        # one transaction, the sockets with the service: stopped one by one, a client
        # reconnecting in between (the agent does) socket-activated libvirtd again, and the
        # sockets then refused to start ("Socket service libvirtd.service already active")
        systemctl stop libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket \
            libvirtd-tcp.socket libvirtd-tls.socket libvirtd.service 2>/dev/null || true
        # --no-reload: only the symlinks (the units exist already; a daemon-reload per call
        # took minutes under TCG, and the step timed out: storage lab, 2026-12-02 04:58)
        systemctl --no-reload disable libvirtd-tcp.socket >/dev/null 2>&1 || true
        systemctl --no-reload enable libvirtd-tls.socket
        systemctl start libvirtd.socket libvirtd-tls.socket
        systemctl start libvirtd-ro.socket libvirtd-admin.socket 2>/dev/null || true
        systemctl start libvirtd.service
    else
        systemctl restart libvirtd.service
    fi
else
    pidf=/run/libvirt/libvirtd.pid
    if [ -s "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
        pid=$(cat "$pidf")
        kill -s TERM "$pid"
        i=0
        while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    fi
    libvirtd --listen --daemon --pid-file "$pidf"
fi
i=0
until virsh -c qemu:///system version >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -lt 100 ] || { echo "libvirtd does not answer after its restart" >&2; exit 1; }
    sleep 0.1
done
echo restarted
"""


def _restart_libvirtd(run: _HostRun) -> None:
    _, init, _ = run.run(["cat", "/proc/1/comm"], check=False, what="init check")
    run.run(
        ["sh", "-c", _RESTART_LIBVIRTD, "haven-libvirtd", init.strip()],
        what="restarting libvirtd",
        timeout=COMMAND_TIMEOUT_S,  # stopping and starting five units: minutes under TCG
    )


def _configure_migration(run: _HostRun) -> dict[str, Any]:
    """libvirt's migration settings through the agent; over TLS first the host's certificate:
    the agent makes its key and a request, the cluster CA signs it (console/bootstrap/pki.py),
    the agent installs both certificates. libvirtd is restarted when anything changed."""
    from console.bootstrap import pki

    transport = migration_transport()
    args = ConfigureMigrationArgs(run.address, run.address)
    cert = ""
    if transport == "tls":
        request = _agent_step(run, TlsRequestArgs(), "the libvirt TLS key")
        try:
            cert = pki.issue_host_certificate(
                run.host.cluster, run.name, run.address, str(request.get("csr", ""))
            )
        except pki.CertificateError as exc:
            raise BootstrapError(str(exc)) from None
        args = replace(
            args,
            transport="tls",
            ca_certificate=pki.ca_certificate(run.host.cluster),
            certificate=cert,
        )
    result = _agent_step(run, args, "libvirt migration settings")
    restarted = bool(result.get("restart_required")) and transport == "tls"
    if restarted:  # TLS only works once libvirtd has read its certificates
        _restart_libvirtd(run)
    elif result.get("restart_required"):  # plain TCP: as before, a person restarts it
        jobs.add_event(
            run.job,
            f"{run.name}: libvirtd must be restarted to apply the migration settings",
            level=JobEvent.Level.WARNING,
            host=run.host,
            step="bootstrap.register",
        )
    Host.objects.filter(pk=run.host.pk).update(tls_certificate=cert)
    run.host.tls_certificate = cert
    out: dict[str, Any] = {
        "job": result["job"],
        "transport": transport,
        "changed": result.get("changed"),
        "libvirtd_restarted": restarted,
    }
    if cert:
        out["certificate"] = pki.describe(cert)
    return out


STEPS: dict[str, Callable[[_HostRun], dict[str, Any]]] = {
    "bootstrap.connect": _connect,
    "bootstrap.install": _install,
    "bootstrap.configure": _configure,
    "bootstrap.register": _register,
    **cluster_stack.STEPS,  # with "Enable shared storage" (console/bootstrap/cluster_stack.py)
}

__all__ = [
    "BootstrapError",
    "HostSpec",
    "fingerprint_of",
    "run_bootstrap",
    "scan_host_key",
    "start_bootstrap",
]
