"""Haven lab: N real virtualization hosts on one Linux machine (shared/LAB.md, README.md).

A lab host is a network namespace on the bridge `havenbr0` plus mount/UTS/PID namespaces with a
shell as PID 1, its own sshd (password root login) and its own libvirtd listening on TCP. Its
BMC is an OpenIPMI `ipmi_sim` in the root namespace whose chassis control calls back into this
module, so the real `fence_ipmilan` can power the host off and on.

Standard library only: the BMC's chassis-control program and the lab fence agent run this module
with the system Python.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import labkit  # noqa: E402  (deploy/lab/labkit.py: shared with the storage lab)
from labkit import ProcRef, load_ref, save_ref, start_time  # noqa: E402

REPO = HERE.parents[1]
DEFAULT_ROOT = REPO / "var" / "lab"
DEFAULT_HOSTS = ("et-virt05", "et-virt06", "et-virt07")

BRIDGE = "havenbr0"
SUBNET = "10.88.0"
BRIDGE_ADDRESS = f"{SUBNET}.254"
PREFIX_LEN = 24
MAX_INDEX = 250  # host addresses 10.88.0.1 .. 10.88.0.250
LIBVIRT_PORT = 16509
LIBVIRT_TLS_PORT = 16514
SSH_PORT = 22
BMC_PORT_BASE = 16200  # the BMC of 10.88.0.N listens on 10.88.0.254:(16200 + N)/udp
BMC_USER = "admin"
MIGRATION_PORTS = (49152, 49215)
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0

# Host names become hostnames, file names and netns names: one DNS label, nothing to escape.
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,22}[a-z0-9]$")
# The lab root ends up inside the BMC's chassis-control command line: keep it plain.
SAFE_PATH_RE = re.compile(r"^/[A-Za-z0-9_./-]+$")
BRIDGE_ALIAS_PREFIX = "haven-lab:"
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Binaries the lab needs and the Debian package that provides each.
REQUIRED_BINARIES: Mapping[str, str] = {
    "ip": "iproute2",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "libvirtd": "libvirt-daemon-system",
    "qemu-system-x86_64": "qemu-system-x86",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "openssl": "openssl",
    "ipmi_sim": "openipmi",
}

# PID 1 of a lab host. Positional arguments only ($1 host dir, $2 host name): no value is ever
# interpolated into this text. Each "SRC:DST" pair below is a per-host bind mount.
HOST_INIT = r"""
set -eu
dir=$1
name=$2
hostname "$name"
mount -t tmpfs -o mode=0755,size=64m haven-run /run
mkdir -p /run/sshd /run/lock /run/libvirt
for pair in etc/libvirt:/etc/libvirt run/libvirt:/run/libvirt lib/libvirt:/var/lib/libvirt \
            cache/libvirt:/var/cache/libvirt log/libvirt:/var/log/libvirt \
            etc/hosts:/etc/hosts etc/resolv.conf:/etc/resolv.conf etc/shadow:/etc/shadow \
            etc/fstab:/etc/fstab root-ssh:/root/.ssh etc/haven:/etc/haven etc/pki:/etc/pki; do
    mount --bind "$dir/${pair%%:*}" "${pair#*:}"
done
/usr/sbin/sshd -f "$dir/ssh/sshd_config" -E "$dir/log/sshd.log"
libvirtd --listen --pid-file /run/libvirt/libvirtd.pid &
echo "haven-lab: $name powered on"
# What the console's SSH bootstrap installed starts again at power-on (its boot hook).
if [ -x "/etc/haven/boot-$name.sh" ]; then "/etc/haven/boot-$name.sh" || true; fi
while :; do sleep 3600 & wait $!; done
"""


class LabError(RuntimeError):
    """A lab operation failed; the message says what to do about it."""


def _which(binary: str) -> str | None:
    path = os.environ.get("PATH", "") + ":" + SBIN_PATH
    return shutil.which(binary, path=path)


def missing_prerequisites() -> list[str]:
    """What stops the lab from running here, as messages a human can act on."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("run as root: the lab creates network namespaces, veths and a bridge")
    for binary, package in REQUIRED_BINARIES.items():
        if _which(binary) is None:
            problems.append(
                f"{binary} not installed: apt-get install -y --no-install-recommends {package}"
            )
    return problems


def check_prerequisites() -> None:
    """Raise LabError listing every missing prerequisite."""
    problems = missing_prerequisites()
    if problems:
        raise LabError("; ".join(problems))


def namespace_support() -> str | None:
    """None when this machine can create the lab's namespaces, else the reason it cannot."""
    if os.geteuid() != 0:
        return "not root: network namespaces need root"
    if _which("ip") is None or _which("unshare") is None:
        return "no `ip netns`/`unshare` (apt-get install iproute2 util-linux)"
    probe = f"havenprobe{os.getpid()}"
    try:
        _run(["ip", "netns", "add", probe])
    except LabError as exc:
        return f"cannot create a network namespace: {exc}"
    _run(["ip", "netns", "delete", probe], check=False)
    return None


def _run(argv: Sequence[str], *, check: bool = True, input: str | None = None) -> str:
    """Run a helper command (no shell); return stdout; LabError with stderr on failure."""
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":" + SBIN_PATH}
    proc = subprocess.run(list(argv), capture_output=True, text=True, input=input, env=env)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv[:3])} failed: {proc.stderr.strip()}")
    return proc.stdout


# --- processes we started: pid + start time, so a recycled pid is never killed ----------------
# (deploy/lab/labkit.py, shared with the storage lab)
_start_time, _load_ref, _save_ref = start_time, load_ref, save_ref


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll predicate until true; LabError naming `what` after timeout seconds."""
    labkit.wait_for(predicate, timeout, what, interval, LabError)


def libvirtd_answers(address: str) -> bool:
    """libvirtd listens on TCP (as the lab starts it) or, once the console's bootstrap
    switched it to TLS (its certificates in the host's own /etc/pki), on TLS."""
    return tcp_open(address, LIBVIRT_PORT, 0.2) or tcp_open(address, LIBVIRT_TLS_PORT, 0.2)


def tcp_open(address: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on address:port."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- hosts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabHost:
    """One lab host: where to reach it and the secrets to get in (hidden from repr)."""

    name: str
    index: int
    dir: Path
    host_uuid: str
    root_password: str = field(repr=False)
    bmc_password: str = field(repr=False)

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.index}"

    @property
    def libvirt_uri(self) -> str:
        """The URI the console uses; from inside the host it is qemu:///system."""
        return f"qemu+tcp://{self.address}/system"

    @property
    def ssh_port(self) -> int:
        return SSH_PORT

    @property
    def netns(self) -> str:
        return f"haven-{self.name}"

    @property
    def veth(self) -> str:
        """The bridge-side end of the host's cable (net_cut takes it down)."""
        return f"havenh{self.index}"

    @property
    def bmc_ip(self) -> str:
        return BRIDGE_ADDRESS

    @property
    def bmc_port(self) -> int:
        return BMC_PORT_BASE + self.index

    @property
    def bmc_user(self) -> str:
        return BMC_USER

    @property
    def ssh_host_key_path(self) -> Path:
        return self.dir / "ssh" / "ssh_host_ed25519_key.pub"

    def ssh_host_key(self) -> tuple[str, str]:
        """(key type, base64 key) of the host's sshd, to pin instead of auto-accepting."""
        kind, blob = self.ssh_host_key_path.read_text().split()[:2]
        return kind, blob

    def fence_ipmilan_options(self) -> dict[str, str]:
        """stdin options for the real /usr/sbin/fence_ipmilan (add `action`)."""
        return {
            "ip": self.bmc_ip,
            "ipport": str(self.bmc_port),
            "username": self.bmc_user,
            "password": self.bmc_password,
            "lanplus": "1",
            "cipher": "3",
        }

    @property
    def unshare(self) -> ProcRef | None:
        """The host's power plug (the unshare process) while it is powered on."""
        ref = _load_ref(self.dir / "power.json")
        return ref if ref is not None and ref.alive() else None

    def pid1(self) -> int | None:
        """PID (root namespace) of the host's PID 1: run things inside with nsenter -t PID -a."""
        ref = self.unshare
        if ref is None:
            return None
        try:
            children = Path(f"/proc/{ref.pid}/task/{ref.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def powered_on(self) -> bool:
        return self.unshare is not None


def _validate_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise LabError(f"bad host name {name!r}: use lowercase letters, digits and '-' (2-24)")
    return name


class Lab:
    """The lab rooted at `root` (default <repo>/var/lab); one lab per machine (one bridge)."""

    def __init__(self, root: Path | str = DEFAULT_ROOT) -> None:
        self.root = Path(root).resolve()
        if not SAFE_PATH_RE.match(str(self.root)):
            raise LabError(f"lab root {self.root} must match {SAFE_PATH_RE.pattern}")
        self.hosts_dir = self.root / "hosts"
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # -- queries ----------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Hosts of this lab (created and not destroyed), in address order."""
        if not self.hosts_dir.is_dir():
            return []
        hosts = [self._load(p.name) for p in self.hosts_dir.iterdir() if NAME_RE.match(p.name)]
        return [h.name for h in sorted((h for h in hosts if h), key=lambda h: h.index)]

    def hosts(self) -> list[LabHost]:
        return [self.host(n) for n in self.names()]

    def host(self, name: str) -> LabHost:
        host = self._load(_validate_name(name))
        if host is None:
            raise LabError(f"no lab host {name!r} under {self.hosts_dir}")
        return host

    def _load(self, name: str) -> LabHost | None:
        path = self.hosts_dir / name / "host.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return LabHost(
            name=name,
            index=int(data["index"]),
            dir=path.parent,
            host_uuid=str(data["host_uuid"]),
            root_password=str(data["root_password"]),
            bmc_password=str(data["bmc_password"]),
        )

    def status(self) -> list[dict[str, object]]:
        """One row per host: power, reachability, cable and BMC state (no secrets)."""
        rows: list[dict[str, object]] = []
        for host in self.hosts():
            on = host.powered_on()
            bmc = _load_ref(host.dir / "bmc" / "ipmi_sim.json")
            rows.append(
                {
                    "name": host.name,
                    "address": host.address,
                    "power": "on" if on else "off",
                    "pid1": host.pid1(),
                    "libvirtd": on and libvirtd_answers(host.address),
                    "sshd": on and tcp_open(host.address, SSH_PORT, 0.2),
                    "cable": "cut" if self.is_cut(host.name) else "up",
                    "bmc": f"{host.bmc_ip}:{host.bmc_port}"
                    if bmc is not None and bmc.alive()
                    else "down",
                    "libvirt_uri": host.libvirt_uri,
                }
            )
        return rows

    # -- create / destroy -------------------------------------------------------------------

    def create(
        self,
        names: Iterable[str] = DEFAULT_HOSTS,
        *,
        wait: bool = True,
        root_password: str | None = None,
    ) -> list[LabHost]:
        """Create (or complete) the hosts, power them on, and wait until sshd and libvirtd answer.

        Idempotent: existing hosts keep their address, UUID, passwords and host keys.
        `root_password` sets the same root password on every new host (default: random each).
        """
        check_prerequisites()
        wanted = [_validate_name(n) for n in names]
        self.hosts_dir.mkdir(parents=True, exist_ok=True)
        self._ensure_bridge()
        hosts = [self._ensure_host_files(n, root_password) for n in wanted]
        for host in self.hosts():
            self._write_etc_hosts(host)
        for host in hosts:
            self._ensure_network(host)
            self._ensure_bmc(host)
            self.power_on(host.name, wait=False)
        if wait:
            for host in hosts:
                self.wait_ready(host.name)
                bmc = _load_ref(host.dir / "bmc" / "ipmi_sim.json")
                if bmc is None or not bmc.alive():
                    raise LabError(f"{host.name}'s BMC died: see {host.dir}/bmc/ipmi_sim.log")
        return hosts

    def destroy(self) -> None:
        """Power off and remove every host, its BMC, netns and veth, then the bridge."""
        for name in self.names():
            host = self.host(name)
            self.power_off(name)
            bmc = _load_ref(host.dir / "bmc" / "ipmi_sim.json")
            if bmc is not None:
                bmc.kill()
                self._reap(f"bmc:{name}")
                wait_for(bmc.dead, STOP_TIMEOUT, f"{name}'s BMC to stop")
            if _link_exists(host.veth):
                _run(["ip", "link", "delete", host.veth])
            if host.netns in _netns_list():
                _run(["ip", "netns", "delete", host.netns])
            shutil.rmtree(host.dir)
        if _link_exists(BRIDGE) and self._bridge_owner() == str(self.root):
            _run(["ip", "link", "delete", BRIDGE])

    def _bridge_owner(self) -> str | None:
        out = _run(["ip", "-o", "link", "show", "dev", BRIDGE], check=False)
        match = re.search(r"alias " + re.escape(BRIDGE_ALIAS_PREFIX) + r"(\S+)", out)
        return match.group(1) if match else None

    def _ensure_bridge(self) -> None:
        if _link_exists(BRIDGE):
            owner = self._bridge_owner()
            if owner != str(self.root):
                raise LabError(
                    f"bridge {BRIDGE} already belongs to the lab at {owner}: "
                    f"destroy that lab first (labctl --root {owner} destroy)"
                )
        else:
            _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
            _run(["ip", "link", "set", BRIDGE, "alias", BRIDGE_ALIAS_PREFIX + str(self.root)])
        addr = _run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE])
        if f"{BRIDGE_ADDRESS}/{PREFIX_LEN}" not in addr:
            _run(["ip", "addr", "add", f"{BRIDGE_ADDRESS}/{PREFIX_LEN}", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])

    def _allocate_index(self, name: str) -> int:
        taken = {h.index for h in self.hosts()}
        digits = re.search(r"(\d+)$", name)
        if digits and 1 <= int(digits.group(1)) <= MAX_INDEX and int(digits.group(1)) not in taken:
            return int(digits.group(1))
        for index in range(1, MAX_INDEX + 1):
            if index not in taken:
                return index
        raise LabError(f"no free address left in {SUBNET}.0/{PREFIX_LEN}")

    def _ensure_host_files(self, name: str, root_password: str | None) -> LabHost:
        existing = self._load(name)
        if existing is not None:
            return existing
        hdir = self.hosts_dir / name
        for sub in (
            "etc/libvirt",
            "run/libvirt",
            "lib/libvirt",
            "cache/libvirt",
            "log/libvirt/qemu",
            "ssh",
            "root-ssh",
            "etc/haven",
            "bmc/state",
        ):
            (hdir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(hdir / "root-ssh", 0o700)
        os.chmod(hdir / "bmc", 0o700)
        data = {
            "index": self._allocate_index(name),
            "host_uuid": str(uuid.uuid4()),
            "root_password": root_password or secrets.token_urlsafe(12),
            "bmc_password": secrets.token_urlsafe(12)[:16],  # IPMI 2.0 allows up to 20 bytes
        }
        secret_file = hdir / "host.json"
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        host = self._load(name)
        assert host is not None
        self._write_host_config(host)
        return host

    def _write_host_config(self, host: LabHost) -> None:
        d = host.dir
        (d / "etc/libvirt/libvirtd.conf").write_text(
            "# Haven lab host: TCP without auth, reachable only on the lab bridge.\n"
            "listen_tls = 0\nlisten_tcp = 1\n"
            f'listen_addr = "{host.address}"\ntcp_port = "{LIBVIRT_PORT}"\n'
            'auth_tcp = "none"\nauth_unix_rw = "none"\nauth_unix_ro = "none"\n'
            'unix_sock_group = "root"\nunix_sock_rw_perms = "0770"\n'
            f'host_uuid = "{host.host_uuid}"\n'
            'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
        )
        (d / "etc/libvirt/qemu.conf").write_text(
            "# Haven lab host: TCG as root, no cgroups, no security driver (LAB.md).\n"
            'user = "root"\ngroup = "root"\ndynamic_ownership = 0\n'
            'security_driver = "none"\nstdio_handler = "file"\ncgroup_controllers = [ ]\n'
            f'migration_host = "{host.address}"\nmigration_address = "{host.address}"\n'
            f"migration_port_min = {MIGRATION_PORTS[0]}\n"
            f"migration_port_max = {MIGRATION_PORTS[1]}\n"
        )
        (d / "etc/resolv.conf").write_text("options timeout:1 attempts:1\n")
        fstab = d / "etc/fstab"  # the agent's fstab_entry edits this host's own, never ours
        if not fstab.exists():
            fstab.write_text("# Haven lab host fstab\n")
        self._write_shadow(host)
        key = d / "ssh" / "ssh_host_ed25519_key"
        if not key.exists():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", str(key)])
        (d / "ssh/sshd_config").write_text(
            "# Haven lab host sshd: password root login on the lab address only.\n"
            f"Port {SSH_PORT}\nListenAddress {host.address}\n"
            f"HostKey {key}\nPidFile /run/sshd.pid\n"
            "PermitRootLogin yes\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nUsePAM no\nStrictModes no\nUseDNS no\nPrintMotd no\n"
            "Subsystem sftp internal-sftp\n"
        )
        self._write_bmc_config(host)

    def _write_shadow(self, host: LabHost) -> None:
        """A copy of /etc/shadow whose root hash is this host's password (the real one is
        never written)."""
        digest = _run(["openssl", "passwd", "-6", "-stdin"], input=host.root_password).strip()
        lines = []
        for line in Path("/etc/shadow").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == "root" and len(fields) > 2:
                fields[1] = digest
                line = ":".join(fields)
            lines.append(line)
        target = host.dir / "etc" / "shadow"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _write_etc_hosts(self, host: LabHost) -> None:
        """Every lab host knows every other by name (in place: the file may be bind-mounted)."""
        text = f"127.0.0.1\tlocalhost\n{host.address}\t{host.name}\n"
        text += f"{BRIDGE_ADDRESS}\thaven-console\n"
        text += "".join(f"{h.address}\t{h.name}\n" for h in self.hosts() if h.name != host.name)
        path = host.dir / "etc" / "hosts"
        with open(path, "a+") as f:
            f.seek(0)
            if f.read() != text:
                f.seek(0)
                f.truncate()
                f.write(text)

    def _ensure_network(self, host: LabHost) -> None:
        if host.netns not in _netns_list():
            _run(["ip", "netns", "add", host.netns])
        inside = ["ip", "-n", host.netns]
        if not _link_exists(host.veth):
            peer = f"havenn{host.index}"
            _run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", peer])
            _run(["ip", "link", "set", peer, "netns", host.netns])
            _run([*inside, "link", "set", peer, "name", "eth0"])
            _run([*inside, "addr", "add", f"{host.address}/{PREFIX_LEN}", "dev", "eth0"])
            _run([*inside, "link", "set", "eth0", "up"])
            _run(["ip", "link", "set", host.veth, "master", BRIDGE])
            _run(["ip", "link", "set", host.veth, "up"])
        _run([*inside, "link", "set", "lo", "up"])

    # -- BMC ---------------------------------------------------------------------------------

    def _write_bmc_config(self, host: LabHost) -> None:
        chassis = f"{sys.executable} {Path(__file__).resolve()} --root {self.root} chassis"
        for part in chassis.split():
            if not SAFE_PATH_RE.match(part) and part not in ("--root", "chassis"):
                raise LabError(f"path {part!r} is unsafe in the BMC's chassis_control line")
        guid = uuid.UUID(host.host_uuid).hex
        labkit.write_bmc(host.dir / "bmc", host.name, host.bmc_ip, host.bmc_port, guid,
                         f"{chassis} {host.name}", BMC_USER, host.bmc_password)  # fmt: skip

    def _ensure_bmc(self, host: LabHost) -> None:
        bdir = host.dir / "bmc"
        ref = _load_ref(bdir / "ipmi_sim.json")
        if ref is not None and ref.alive():
            return
        env = {"PATH": SBIN_PATH, "LANG": "C.UTF-8"}
        gone = f"ipmi_sim for {host.name} exited at once"
        self._children[f"bmc:{host.name}"], _ = labkit.start_bmc(bdir, env, gone, LabError)

    def chassis(self, name: str, op: str, args: Sequence[str]) -> str:
        """The BMC's chassis_control program (deploy/lab/labkit.py ``chassis``)."""
        host = self.host(name)
        return labkit.chassis(
            op,
            args,
            powered_on=host.powered_on,
            power_on=lambda: self.power_on(name, wait=False),
            power_off=lambda: self.power_off(name),
            error=LabError,
        )

    # -- power and cable ---------------------------------------------------------------------

    def power_on(self, name: str, *, wait: bool = True) -> LabHost:
        """Plug the host in: a fresh PID 1 starts sshd and libvirtd. A no-op when it is on."""
        host = self.host(name)
        if host.powered_on():
            if wait:
                self.wait_ready(name)
            return host
        # Powered off from elsewhere (the BMC's chassis program): collect our old plug process.
        self._reap(name)
        self._ensure_network(host)
        # A reboot loses /run: stale pid files and sockets would stop libvirtd from starting.
        rundir = host.dir / "run" / "libvirt"
        shutil.rmtree(rundir, ignore_errors=True)
        rundir.mkdir(parents=True)
        Path("/root/.ssh").mkdir(mode=0o700, exist_ok=True)  # mount point for root-ssh
        Path("/etc/haven").mkdir(mode=0o700, exist_ok=True)  # mount point for etc/haven
        Path("/etc/pki").mkdir(mode=0o755, exist_ok=True)  # mount point for etc/pki
        (host.dir / "etc" / "haven").mkdir(mode=0o700, exist_ok=True)
        (host.dir / "etc" / "pki").mkdir(mode=0o755, exist_ok=True)  # libvirt's TLS files
        argv = [
            "ip",
            "netns",
            "exec",
            host.netns,
            "unshare",
            "--uts",
            "--mount",
            "--pid",
            "--fork",
            "--mount-proc",
            "--propagation",
            "private",
            "--kill-child=SIGKILL",
            "bash",
            "-c",
            HOST_INIT,
            "haven-lab-init",
            str(host.dir),
            host.name,
        ]
        self._children[name], _ = labkit.power_on(
            argv,
            host.dir / "console.log",
            {"PATH": SBIN_PATH, "LANG": "C.UTF-8", "HOME": "/root"},
            host.dir / "power.json",
            f"{name} failed to power on",
            LabError,
        )
        if wait:
            self.wait_ready(name)
        return host

    def wait_ready(self, name: str, timeout: float = READY_TIMEOUT) -> None:
        """Wait until the host's sshd and libvirtd accept TCP connections."""
        host = self.host(name)

        def ready() -> bool:
            if not host.powered_on():
                raise LabError(f"{name} powered off while booting: see {host.dir}/console.log")
            return tcp_open(host.address, SSH_PORT, 0.2) and libvirtd_answers(host.address)

        wait_for(ready, timeout, f"{name}'s sshd and libvirtd", interval=0.05)

    def power_off(self, name: str) -> None:
        """Pull the plug: SIGKILL the unshare process and every process in the host's netns."""
        host = self.host(name)
        ref = _load_ref(host.dir / "power.json")
        if ref is not None:
            ref.kill()
        for pid in _netns_pids(host.netns):
            pref = ProcRef.of(pid)
            if pref is not None:
                pref.kill()
        self._reap(name)
        wait_for(
            lambda: (ref is None or not ref.alive()) and not _netns_pids(host.netns),
            STOP_TIMEOUT,
            f"{name}'s processes to die",
        )
        (host.dir / "power.json").unlink(missing_ok=True)

    def net_cut(self, name: str) -> None:
        """Unplug the host's network cable (its bridge-side veth goes down); it keeps running."""
        _run(["ip", "link", "set", self.host(name).veth, "down"])

    def net_restore(self, name: str) -> None:
        _run(["ip", "link", "set", self.host(name).veth, "up"])

    def is_cut(self, name: str) -> bool:
        out = _run(["ip", "-o", "link", "show", "dev", self.host(name).veth], check=False)
        flags = re.search(r"<([^>]*)>", out)
        return flags is not None and "UP" not in flags.group(1).split(",")

    def _reap(self, key: str) -> None:
        """Collect a killed child of ours so it leaves no zombie behind."""
        child = self._children.pop(key, None)
        if child is not None:
            child.wait(timeout=STOP_TIMEOUT)

    # -- running things inside a host ----------------------------------------------------------

    def _nsenter(self, name: str, argv: Sequence[str], cwd: object = None) -> list[str]:
        pid1 = self.host(name).pid1()
        if pid1 is None:
            raise LabError(f"{name} is powered off")
        # Entering a mount namespace resets the working directory to /: keep the caller's.
        wd = os.path.abspath(str(cwd)) if cwd is not None else os.getcwd()
        return ["nsenter", "-t", str(pid1), "-a", f"--wd={wd}", "--", *argv]

    def run_in(
        self,
        name: str,
        argv: Sequence[str],
        *,
        check: bool = False,
        timeout: float | None = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the host (all its namespaces) and collect its output as text."""
        return subprocess.run(
            self._nsenter(name, argv),
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            input=input,
        )

    def popen_in(self, name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start argv inside the host and return the Popen (e.g. an agent); it dies with the
        host's power."""
        return subprocess.Popen(self._nsenter(name, argv, kwargs.get("cwd")), **kwargs)


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _netns_list() -> set[str]:
    out = _run(["ip", "netns", "list"], check=False)
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _netns_pids(netns: str) -> list[int]:
    if netns not in _netns_list():
        return []
    out = _run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


# --- CLI -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="labctl", description="Create, power and tear down Haven lab hosts (LAB.md)."
    )
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="lab state directory")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create and power on hosts (idempotent)")
    create.add_argument("names", nargs="*", default=list(DEFAULT_HOSTS))
    sub.add_parser("destroy", help="remove every host, BMC, netns and the bridge")
    status = sub.add_parser("status", help="show the hosts")
    status.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="connection details of one host")
    show.add_argument("name")
    show.add_argument("--secrets", action="store_true", help="include the passwords")
    for cmd in ("power-on", "power-off", "net-cut", "net-restore"):
        sub.add_parser(cmd).add_argument("name")
    run = sub.add_parser("run", help="run a command inside a host: labctl run NAME -- CMD...")
    run.add_argument("name")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    chassis = sub.add_parser("chassis", help="(called by the BMC) get|set power")
    chassis.add_argument("name")
    chassis.add_argument("op")
    chassis.add_argument("args", nargs="*")
    args = parser.parse_args(argv)

    try:
        lab = Lab(args.root)
        if args.command == "create":
            started = time.monotonic()
            hosts = lab.create(args.names)
            print(f"{len(hosts)} hosts up in {time.monotonic() - started:.2f} s")
            _print_status(lab)
        elif args.command == "destroy":
            lab.destroy()
        elif args.command == "status":
            if args.json:
                print(json.dumps(lab.status(), indent=2))
            else:
                _print_status(lab)
        elif args.command == "show":
            _print_host(lab.host(args.name), args.secrets)
        elif args.command == "power-on":
            lab.power_on(args.name)
        elif args.command == "power-off":
            lab.power_off(args.name)
        elif args.command == "net-cut":
            lab.net_cut(args.name)
        elif args.command == "net-restore":
            lab.net_restore(args.name)
        elif args.command == "run":
            cmd = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            return subprocess.call(lab._nsenter(args.name, cmd))
        elif args.command == "chassis":
            out = lab.chassis(args.name, args.op, args.args)
            if out:
                print(out)
    except LabError as exc:
        # ipmi_sim reads errors of its chassis program from stdout.
        stream = sys.stdout if args.command == "chassis" else sys.stderr
        print(f"labctl: {exc}", file=stream)
        return 1
    return 0


def _print_status(lab: Lab) -> None:
    print(f"{'NAME':<12} {'ADDRESS':<12} {'POWER':<5} {'PID1':>7} LIBVIRTD SSHD CABLE BMC")
    for row in lab.status():
        print(
            f"{row['name']!s:<12} {row['address']!s:<12} {row['power']!s:<5} "
            f"{row['pid1'] or '-'!s:>7} {'yes' if row['libvirtd'] else 'no':<8} "
            f"{'yes' if row['sshd'] else 'no':<4} {row['cable']!s:<5} {row['bmc']}"
        )


def _print_host(host: LabHost, with_secrets: bool) -> None:
    hidden = "(hidden: --secrets)"
    for key, value in (
        ("name", host.name),
        ("address", host.address),
        ("libvirt_uri", host.libvirt_uri),
        ("ssh", f"root@{host.address}:{host.ssh_port}"),
        ("root_password", host.root_password if with_secrets else hidden),
        ("ssh_host_key", " ".join(host.ssh_host_key())),
        ("bmc", f"{host.bmc_user}@{host.bmc_ip}:{host.bmc_port} (lanplus, cipher 3)"),
        ("bmc_password", host.bmc_password if with_secrets else hidden),
        ("host_uuid", host.host_uuid),
        ("pid1", host.pid1()),
        ("dir", host.dir),
    ):
        print(f"{key:<14} {value}")


if __name__ == "__main__":
    sys.exit(main())
