"""Haven storage lab: three Debian 12 VMs (own kernels: dlm, lvmlockd, GFS2) sharing raw disks.

Built from Debian's packages only (debootstrap from this machine's own mirror), cached under
``var/storage-lab/cache`` keyed by the package list: a second build reuses the image. Each VM
boots Debian's kernel with a tiny initrd (klibc + the virtio/ext4 modules) and systemd as PID 1
under QEMU TCG (``tb-size=256``), from its own qcow2 overlay on the shared read-only base image,
with the lab's "LUNs" (sparse raw files, ``share-rw=on``, fixed serials) and a NIC on a bridge
inside the network namespace ``stlab``. The machine reaches the VMs through a veth
(``stlab0``, 10.89.0.254/24); nothing else on the machine is touched.

Per-VM identity (hostname, address, SSH host key) reaches the VM through QEMU's fw_cfg
(``opt/haven/*``), read at boot by ``haven-seed.service``: the base image stays one file.

Standard library only (the fence agent runs it with the system Python). See README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import labkit
from labkit import ProcRef, load_ref, start_time

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
DEFAULT_ROOT = REPO / "var" / "storage-lab"
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

NETNS = "stlab"  # not "haven*": the namespace lab's teardown checks it left none of those
BRIDGE = "svbr0"  # inside the namespace
UPLINK = "stlab0"  # the machine's end of the veth into the namespace
SUBNET = "10.89.0"
CONSOLE_ADDRESS = f"{SUBNET}.254"
PREFIX_LEN = 24
SUITE = "bookworm"
VMS = (("sv1", 11), ("sv2", 12), ("sv3", 13))
LUNS = (("shared0", 2 * 1024**3), ("shared1", 1024**3))
VM_MEMORY_MIB = 768
BASE_SIZE = "3G"
BOOT_TIMEOUT = 600.0
STOP_TIMEOUT = 10.0
# One OpenIPMI BMC per VM (ipmi_sim) in the machine's namespace, so it survives the VM's power
# loss, on the console's address in the lab network: the VMs reach it, so Haven's fence step on
# a healthy VM runs the real fence_ipmilan (lanplus, cipher 3) against a lost one.
BMC_PORT_BASE = 6230
BMC_USER = "admin"

# Everything the hosts run: the cluster stack, the storage tools, and what the console's SSH
# bootstrap needs (python3-venv for the agent's venv, libvirt for the agent's hypervisor).
PACKAGES = (
    "systemd-sysv",
    "udev",
    "kmod",
    "dbus",
    "linux-image-amd64",
    "initramfs-tools",
    "corosync",
    "dlm-controld",
    "lvm2",
    "lvm2-lockd",
    "gfs2-utils",
    "openssh-server",
    "python3",
    "python3-venv",
    "iproute2",
    "procps",
    "libvirt-daemon-system",
    "libvirt-daemon-driver-qemu",
    "qemu-system-x86",  # libvirt's host facts need an emulator (the agent's heartbeat)
    "libpam-systemd",  # polkitd (for libvirt) needs a logind; debootstrap takes no alternative
    "util-linux",
    # Haven fences a lost VM from a healthy one: the real fence_ipmilan against the lab's BMCs
    "fence-agents",
    "ipmitool",
    # debootstrap does not resolve virtual packages: python3-cryptography (fence-agents) needs
    # python3-cffi-backend-api-*, provided by this one
    "python3-cffi-backend",
)
# Increase when the customisation below changes: the cache key includes it.
IMAGE_REVISION = 3
# Modules the tiny initrd loads (with their dependencies from modules.dep) to mount /dev/vda.
INITRD_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
# Units the image does not start by itself: the console's bootstrap enables the cluster stack;
# the rest only costs boot time under TCG.
DISABLED_UNITS = (
    "corosync.service",
    "dlm.service",
    "lvmlockd.service",
    "lvmlocks.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "man-db.timer",
    "dpkg-db-backup.timer",
    "lvm2-monitor.service",
    "libvirt-guests.service",
)

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,22}[a-z0-9]$")

INITRD_INIT = r"""#!/bin/sh
# Haven storage lab initrd: load the modules, mount root, hand over to systemd.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod "/modules/$m"; done
root=/dev/vda
for arg in $(cat /proc/cmdline); do case $arg in root=*) root=${arg#root=} ;; esac; done
n=0
while [ ! -b "$root" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
mkdir -p /root
mount -t ext4 -o rw "$root" /root || { echo "initrd: cannot mount $root"; sh; }
umount /proc
umount /sys
mount --move /dev /root/dev 2>/dev/null || umount /dev
exec run-init /root /sbin/init "$@"
"""

SEED_UNIT = """[Unit]
Description=Haven storage lab: hostname, address and SSH host key from QEMU fw_cfg
DefaultDependencies=no
After=systemd-remount-fs.service
Before=network-pre.target systemd-networkd.service ssh.service sysinit.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/haven-seed

[Install]
WantedBy=sysinit.target
"""

SEED_SCRIPT = r"""#!/bin/sh
set -eu
modprobe qemu_fw_cfg
d=/sys/firmware/qemu_fw_cfg/by_name/opt/haven
n=0
while [ ! -e "$d/hostname/raw" ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done
name=$(cat "$d/hostname/raw")
addr=$(cat "$d/address/raw")
echo "$name" >/etc/hostname
hostname "$name"
umask 077
cat "$d/ssh_host_ed25519_key/raw" >/etc/ssh/ssh_host_ed25519_key
umask 022
cat "$d/ssh_host_ed25519_key.pub/raw" >/etc/ssh/ssh_host_ed25519_key.pub
mkdir -p /etc/systemd/network
printf '[Match]\nName=eth0\n\n[Network]\nAddress=%s\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' \
    "$addr" >/etc/systemd/network/10-lab.network
"""

SSHD_LAB = """# Haven storage lab: root logs in with the lab's password (see root-password).
PermitRootLogin yes
PasswordAuthentication yes
UseDNS no
HostKey /etc/ssh/ssh_host_ed25519_key
"""


class VMLabError(RuntimeError):
    """A storage-lab operation failed; the message says what to do about it."""


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": os.environ.get("PATH", "") + ":" + SBIN_PATH, "LANG": "C.UTF-8"}


def _run(
    argv: Sequence[str], *, check: bool = True, input: str | None = None, timeout: float = 600
) -> str:
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, input=input, env=_env(), timeout=timeout
    )
    if check and proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip())[-600:]
        raise VMLabError(f"{' '.join(argv[:3])} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


REQUIRED: dict[str, str] = {
    "debootstrap": "debootstrap",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "cpio": "cpio",
    "mkfs.ext4": "e2fsprogs",
    "openssl": "openssl",
    "ssh-keygen": "openssh-client",
    "ip": "iproute2",
}


def missing_prerequisites() -> list[str]:
    problems = [] if os.geteuid() == 0 else ["run as root: debootstrap, namespaces, taps"]
    path = os.environ.get("PATH", "") + ":" + SBIN_PATH
    for binary, package in REQUIRED.items():
        if shutil.which(binary, path=path) is None:
            problems.append(
                f"{binary} not installed: apt-get install -y --no-install-recommends {package}"
            )
    if not Path("/usr/lib/klibc/bin/run-init").exists():
        problems.append(
            "klibc tools missing (tiny initrd): apt-get install -y --no-install-recommends "
            "klibc-utils"
        )
    return problems


def mirror() -> str:
    """The Debian mirror of this machine's own package sources (deb822 or one-line format)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in path.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    sources = Path("/etc/apt/sources.list")
    if sources.exists():
        for line in sources.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1]
    raise VMLabError("no Debian mirror in /etc/apt/sources.list(.d): cannot debootstrap")


# --- processes started here: pid + kernel start time (deploy/lab/labkit.py) ------------------
_start_time, _load_ref = start_time, load_ref


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2
) -> None:
    labkit.wait_for(predicate, timeout, what, interval, VMLabError)


def ssh_banner(address: str, port: int = 22, timeout: float = 1.0) -> bool:
    """True when an SSH server answers with its banner (sshd is up, not just the socket)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


# --- the image -----------------------------------------------------------------------------


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


class Image:
    """The cached base image: rootfs (debootstrap), base.raw (ext4), vmlinuz, initrd."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.rootfs = cache / "rootfs"
        self.base = cache / "base.raw"
        self.kernel = cache / "vmlinuz"
        self.initrd = cache / "initrd.img"
        self.stamp = cache / "image.json"

    def rootfs_key(self) -> str:
        """What debootstrap makes: the suite, the mirror and the packages."""
        text = json.dumps([SUITE, mirror(), sorted(PACKAGES)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def key(self) -> str:
        """The whole image: the rootfs plus the lab's customisation and initrd."""
        text = json.dumps(
            [self.rootfs_key(), IMAGE_REVISION, INITRD_INIT, INITRD_MODULES, SEED_SCRIPT]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def cached(self) -> bool:
        try:
            stamp = json.loads(self.stamp.read_text())
        except (OSError, ValueError):
            return False
        return stamp.get("key") == self.key() and all(
            p.exists() for p in (self.base, self.kernel, self.initrd)
        )

    def build(self, root_password: str, log: Callable[[str], None] = print) -> dict[str, float]:
        """Build what is missing; return the seconds each part took (empty when cached)."""
        if self.cached():
            return {}
        problems = missing_prerequisites()
        if problems:
            raise VMLabError("; ".join(problems))
        self.cache.mkdir(parents=True, exist_ok=True)
        times: dict[str, float] = {}
        key, rootfs_key = self.key(), self.rootfs_key()
        done = self.cache / "rootfs.json"
        try:
            have_rootfs = json.loads(done.read_text()).get("key") == rootfs_key
        except (OSError, ValueError):
            have_rootfs = False
        if not have_rootfs or not self.rootfs.is_dir():
            started = time.monotonic()
            tmp = self.cache / "rootfs.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(self.rootfs, ignore_errors=True)
            log(f"debootstrap {SUITE} from {mirror()} ({len(PACKAGES)} packages requested)")
            _run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    "--include=" + ",".join(PACKAGES),
                    SUITE,
                    str(tmp),
                    mirror(),
                ],
                timeout=3600,
            )
            _run(["chroot", str(tmp), "apt-get", "clean"])
            tmp.rename(self.rootfs)
            done.write_text(json.dumps({"key": rootfs_key}))
            times["debootstrap_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        self._customise(root_password)
        times["customise_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        self._kernel_and_initrd()
        times["initrd_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        tmp_base = self.cache / "base.raw.tmp"
        tmp_base.unlink(missing_ok=True)
        _run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                "havenroot",
                "-d",
                str(self.rootfs),
                str(tmp_base),
                BASE_SIZE,
            ]
        )
        tmp_base.rename(self.base)
        times["mkfs_s"] = round(time.monotonic() - started, 1)
        self.stamp.write_text(json.dumps({"key": key, "built": time.time(), **times}))
        return times

    def _customise(self, root_password: str) -> None:
        r = self.rootfs
        pw_hash = _run(["openssl", "passwd", "-6", "-stdin"], input=root_password + "\n").strip()
        shadow = r / "etc" / "shadow"
        lines = [
            f"root:{pw_hash}:" + ":".join(ln.split(":")[2:]) if ln.startswith("root:") else ln
            for ln in shadow.read_text().splitlines()
        ]
        _write(shadow, "\n".join(lines) + "\n", 0o640)
        for key in (r / "etc" / "ssh").glob("ssh_host_*"):
            key.unlink()
        _write(r / "etc" / "ssh" / "sshd_config.d" / "haven-lab.conf", SSHD_LAB)
        _write(r / "usr" / "local" / "sbin" / "haven-seed", SEED_SCRIPT, 0o755)
        _write(r / "etc" / "systemd" / "system" / "haven-seed.service", SEED_UNIT)
        wants = r / "etc" / "systemd" / "system"
        for target, unit in (
            ("sysinit.target.wants", "haven-seed.service"),
            ("multi-user.target.wants", "systemd-networkd.service"),
        ):
            link = wants / target / unit
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                src = (
                    f"/etc/systemd/system/{unit}"
                    if unit.startswith("haven")
                    else f"/lib/systemd/system/{unit}"
                )
                link.symlink_to(src)
        for unit in DISABLED_UNITS:
            # The links point at /lib/systemd/... inside the image: dangling seen from here, so
            # glob() would skip them; look at each .wants directory instead.
            for target_dir in wants.glob("*.wants"):
                link = target_dir / unit
                if link.is_symlink():
                    link.unlink()
        # Each VM's first boot (empty machine-id) applies the presets, which would enable them
        # all again (seen: corosync and lvmlockd running from boot with Debian's defaults).
        _write(
            r / "etc" / "systemd" / "system-preset" / "00-haven-lab.preset",
            "".join(f"disable {unit}\n" for unit in DISABLED_UNITS),
        )
        _write(r / "etc" / "fstab", "/dev/vda / ext4 rw,noatime 0 1\n")
        hosts = ["127.0.0.1 localhost", f"{CONSOLE_ADDRESS} haven-console"]
        hosts += [f"{SUBNET}.{index} {name}" for name, index in VMS]
        _write(r / "etc" / "hosts", "\n".join(hosts) + "\n")
        _write(r / "etc" / "resolv.conf", "options timeout:1 attempts:1\n")
        # No getty on a serial console nobody reads; journald keeps logs in RAM only.
        _write(
            r / "etc" / "systemd" / "journald.conf.d" / "haven-lab.conf",
            "[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n",
        )

    def _kernel_and_initrd(self) -> None:
        boot = self.rootfs / "boot"
        kernels = sorted(boot.glob("vmlinuz-*"))
        if not kernels:
            raise VMLabError(f"no kernel in {boot}: linux-image-amd64 was not installed")
        kernel = kernels[-1]
        release = kernel.name.removeprefix("vmlinuz-")
        shutil.copyfile(kernel, self.kernel)
        moddir = self.rootfs / "lib" / "modules" / release
        deps: dict[str, list[str]] = {}
        for line in (moddir / "modules.dep").read_text().splitlines():
            mod, _, rest = line.partition(":")
            deps[Path(mod).name.split(".ko")[0].replace("-", "_")] = [mod, *rest.split()]
        order: list[str] = []

        def add(path: str) -> None:
            name = Path(path).name.split(".ko")[0].replace("-", "_")
            if path in order:
                return
            for dep in deps.get(name, [path])[1:]:
                add(dep)
            order.append(path)

        for mod in INITRD_MODULES:
            if mod in deps:
                add(deps[mod][0])
        work = self.cache / "initrd.tmp"
        shutil.rmtree(work, ignore_errors=True)
        for sub in ("bin", "modules", "proc", "sys", "dev", "root"):
            (work / sub).mkdir(parents=True)
        names = []
        for path in order:
            src = moddir / path
            dest = work / "modules" / Path(path).name
            if src.name.endswith(".xz"):
                _run(["sh", "-c", 'xz -dc "$1" > "$2"', "x", str(src), str(dest.with_suffix(""))])
                dest = dest.with_suffix("")
            elif src.name.endswith(".zst"):
                _run(["zstd", "-qdc", str(src), "-o", str(dest.with_suffix(""))])
                dest = dest.with_suffix("")
            else:
                shutil.copyfile(src, dest)
            names.append(dest.name)
        (work / "modules.order").write_text("\n".join(names) + "\n")
        for tool in Path("/usr/lib/klibc/bin").iterdir():
            shutil.copy2(tool, work / "bin" / tool.name)
        for lib in Path("/usr/lib").glob("klibc-*.so"):
            (work / "lib").mkdir(exist_ok=True)
            shutil.copy2(lib, work / "lib" / lib.name)
        _write(work / "init", INITRD_INIT, 0o755)
        files = _run(["sh", "-c", 'cd "$1" && find . | sort', "x", str(work)])
        cpio = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"],
            input=files.encode(),
            cwd=work,
            capture_output=True,
            check=True,
        )
        self.initrd.write_bytes(cpio.stdout)
        shutil.rmtree(work)


# --- the VMs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VM:
    """One storage-lab VM: where to reach it; the lab's root password is hidden from repr."""

    name: str
    index: int
    dir: Path
    root_password: str = field(repr=False)

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.index}"

    @property
    def tap(self) -> str:
        return f"svtap{self.index}"

    @property
    def mac(self) -> str:
        return f"52:54:00:89:00:{self.index:02x}"

    @property
    def overlay(self) -> Path:
        return self.dir / "disk.qcow2"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def bmc_port(self) -> int:
        return BMC_PORT_BASE + self.index

    def fence_ipmilan_options(self, bmc_password: str) -> dict[str, str]:
        """stdin options of the real fence_ipmilan for this VM's BMC (add ``action``)."""
        return {
            "ip": CONSOLE_ADDRESS,
            "ipport": str(self.bmc_port),
            "username": BMC_USER,
            "password": bmc_password,
            "lanplus": "1",
            "cipher": "3",
        }

    def ssh_host_key(self) -> tuple[str, str]:
        """(key type, base64 key) of the VM's sshd, to pin instead of auto-accepting."""
        kind, blob = (self.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        return kind, blob

    def fingerprint(self) -> str:
        """``SHA256:...`` as ssh-keygen -l prints it (what the console's wizard pins)."""
        import base64

        blob = base64.b64decode(self.ssh_host_key()[1])
        return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")

    @property
    def qemu(self) -> ProcRef | None:
        ref = _load_ref(self.dir / "qemu.json")
        return ref if ref is not None and ref.alive() else None

    def powered_on(self) -> bool:
        return self.qemu is not None

    def sshd_up(self, timeout: float = 10.0) -> bool:
        """sshd answers with its banner (on a loaded machine a TCG VM's sshd needs seconds)."""
        return self.powered_on() and ssh_banner(self.address, timeout=timeout)


class StorageLab:
    """The storage lab rooted at ``root`` (default <repo>/var/storage-lab)."""

    def __init__(self, root: Path | str = DEFAULT_ROOT) -> None:
        self.root = Path(root).resolve()
        self.image = Image(self.root / "cache")
        self.vms_dir = self.root / "vms"
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # -- queries --------------------------------------------------------------------------
    def names(self) -> list[str]:
        return [name for name, _ in VMS]

    def vm(self, name: str) -> VM:
        for vm_name, index in VMS:
            if vm_name == name:
                return VM(name, index, self.vms_dir / name, root_password(self.root))
        raise VMLabError(f"no storage-lab VM {name!r}: the VMs are {', '.join(self.names())}")

    def vms(self) -> list[VM]:
        return [self.vm(n) for n in self.names()]

    def bmc_password(self) -> str:
        return root_password(self.root, "bmc-password", nbytes=12)

    def luns(self) -> list[tuple[str, Path, int]]:
        """(serial, image file, size) of each shared disk."""
        return [(serial, self.root / f"{serial}.img", size) for serial, size in LUNS]

    def status(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for vm in self.vms():
            ref = vm.qemu
            rows.append(
                {
                    "name": vm.name,
                    "address": vm.address,
                    "power": "on" if ref else "off",
                    "qemu_pid": ref.pid if ref else None,
                    "sshd": bool(ref) and ssh_banner(vm.address, timeout=5.0),
                    "overlay": vm.overlay.exists(),
                }
            )
        return rows

    # -- build / create ----------------------------------------------------------------------
    def build(self, log: Callable[[str], None] = print) -> dict[str, float]:
        if not self.image.cached() and any(vm.powered_on() for vm in self.vms()):
            # base.raw is the backing file of the running VMs' overlays: never rewrite it
            raise VMLabError(
                "the image changed but VMs run on the old one: `labctl teardown` first"
            )
        return self.image.build(root_password(self.root), log)

    def create(self, *, fresh: bool = False, wait: bool = True) -> dict[str, float]:
        """Build (or reuse) the image, make overlays, LUNs and the network, boot every VM and
        wait for sshd. ``fresh``: new overlays and LUNs (a clean cluster). Idempotent."""
        times = self.build()
        if fresh:
            self.teardown()
        self._ensure_network()
        for _serial, path, size in self.luns():
            if not path.exists():
                with open(path, "wb") as f:
                    f.truncate(size)
        for vm in self.vms():
            self._ensure_vm_files(vm)
            self.ensure_bmc(vm.name)
        started = time.monotonic()
        for vm in self.vms():
            self.power_on(vm.name, wait=False)
        if wait:
            for vm in self.vms():
                self.wait_ready(vm.name)
            times["boot_s"] = round(time.monotonic() - started, 1)
        return times

    def _ensure_vm_files(self, vm: VM) -> None:
        vm.dir.mkdir(parents=True, exist_ok=True)
        if not vm.host_key.exists():
            _run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    vm.name,
                    "-f",
                    str(vm.host_key),
                ]
            )
        if not vm.overlay.exists():
            _run(
                [
                    "qemu-img",
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-F",
                    "raw",
                    "-b",
                    str(self.image.base),
                    str(vm.overlay),
                ]
            )

    def _ensure_network(self) -> None:
        if NETNS not in _netns_list():
            _run(["ip", "netns", "add", NETNS])
        inside = ["ip", "-n", NETNS]
        _run([*inside, "link", "set", "lo", "up"])
        if not _run([*inside, "-o", "link", "show", "dev", BRIDGE], check=False).strip():
            _run([*inside, "link", "add", BRIDGE, "type", "bridge"])
        _run([*inside, "link", "set", BRIDGE, "up"])
        if not Path("/sys/class/net", UPLINK).exists():
            _run(["ip", "link", "add", UPLINK, "type", "veth", "peer", "name", "svup"])
            _run(["ip", "link", "set", "svup", "netns", NETNS])
            _run([*inside, "link", "set", "svup", "master", BRIDGE])
            _run([*inside, "link", "set", "svup", "up"])
            _run(["ip", "addr", "add", f"{CONSOLE_ADDRESS}/{PREFIX_LEN}", "dev", UPLINK])
            _run(["ip", "link", "set", UPLINK, "up"])
        for vm in self.vms():
            if not _run([*inside, "-o", "link", "show", "dev", vm.tap], check=False).strip():
                _run([*inside, "tuntap", "add", "dev", vm.tap, "mode", "tap"])
                _run([*inside, "link", "set", vm.tap, "master", BRIDGE])
            _run([*inside, "link", "set", vm.tap, "up"])

    # -- BMC ---------------------------------------------------------------------------------
    def ensure_bmc(self, name: str) -> ProcRef:
        """Start the VM's ipmi_sim unless it runs (listening on CONSOLE_ADDRESS:bmc_port)."""
        vm = self.vm(name)
        bdir = vm.dir / "bmc"
        ref = _load_ref(bdir / "ipmi_sim.json")
        if ref is not None and ref.alive():
            return ref
        if shutil.which("ipmi_sim", path=_env()["PATH"]) is None:
            raise VMLabError("ipmi_sim not installed: apt-get install -y openipmi")
        self._ensure_network()
        chassis = [sys.executable, str(Path(__file__).resolve()), "--root", str(self.root)]
        for part in chassis:
            if not re.fullmatch(r"[A-Za-z0-9_./+-]+", part):
                raise VMLabError(f"path {part!r} is unsafe in the BMC's chassis_control line")
        program = " ".join([*chassis, "chassis", name])
        guid = hashlib.sha256(f"{self.root}:{name}".encode()).hexdigest()[:32]
        labkit.write_bmc(bdir, name, CONSOLE_ADDRESS, vm.bmc_port, guid, program, BMC_USER,
                         self.bmc_password())  # fmt: skip
        gone = f"ipmi_sim of {name} exited at once"
        self._children[f"bmc:{name}"], started = labkit.start_bmc(
            bdir, _env(), gone, VMLabError, 0.2
        )
        return started

    def chassis(self, name: str, op: str, args: Sequence[str]) -> str:
        """The BMC's chassis_control program (deploy/lab/labkit.py ``chassis``)."""
        vm = self.vm(name)
        return labkit.chassis(
            op,
            args,
            powered_on=vm.powered_on,
            power_on=lambda: self.power_on(name, wait=False),
            power_off=lambda: self.power_off(name),
            error=VMLabError,
        )

    # -- power ---------------------------------------------------------------------------------
    def qemu_argv(self, vm: VM) -> list[str]:
        img = self.image
        argv = [
            "ip", "netns", "exec", NETNS,
            "qemu-system-x86_64",
            "-name", vm.name,
            "-accel", "tcg,thread=multi,tb-size=256",
            "-cpu", "qemu64",
            "-smp", "1",
            "-m", str(VM_MEMORY_MIB),
            "-nodefaults",
            "-display", "none",
            "-serial", f"file:{vm.dir / 'console.log'}",
            "-qmp", f"unix:{vm.dir / 'qmp.sock'},server=on,wait=off",
            "-kernel", str(img.kernel),
            "-initrd", str(img.initrd),
            "-append",
            "root=/dev/vda rw console=ttyS0 net.ifnames=0 mitigations=off quiet "
            "systemd.show_status=0",
            "-drive", f"file={vm.overlay},if=none,id=root,format=qcow2",
            "-device", "virtio-blk-pci,drive=root",
        ]  # fmt: skip
        for serial, path, _ in self.luns():
            argv += [
                "-drive",
                f"file={path},if=none,id={serial},format=raw,cache=none,aio=threads,"
                "file.locking=off",
                "-device",
                f"virtio-blk-pci,drive={serial},share-rw=on,serial={serial}",
            ]
        argv += [
            "-netdev", f"tap,id=n0,ifname={vm.tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={vm.mac}",
            "-fw_cfg", f"name=opt/haven/hostname,string={vm.name}",
            "-fw_cfg", f"name=opt/haven/address,string={vm.address}/{PREFIX_LEN}",
            "-fw_cfg", f"name=opt/haven/ssh_host_ed25519_key,file={vm.host_key}",
            "-fw_cfg", f"name=opt/haven/ssh_host_ed25519_key.pub,file={vm.host_key}.pub",
        ]  # fmt: skip
        return argv

    def power_on(self, name: str, *, wait: bool = True) -> VM:
        """Start the VM's QEMU (a no-op when it runs); ``wait``: until sshd answers."""
        vm = self.vm(name)
        if not vm.powered_on():
            if not self.image.cached():
                raise VMLabError("no image: run `deploy/lab/storage/labctl build` first")
            self._ensure_network()
            self._ensure_vm_files(vm)
            (vm.dir / "qmp.sock").unlink(missing_ok=True)
            self._children[name], _ = labkit.power_on(
                self.qemu_argv(vm),
                vm.dir / "qemu.log",
                _env(),
                vm.dir / "qemu.json",
                f"QEMU of {name} exited at once",
                VMLabError,
                settle_s=0.2,
            )
        if wait:
            self.wait_ready(name)
        return vm

    def wait_ready(self, name: str, timeout: float = BOOT_TIMEOUT) -> None:
        vm = self.vm(name)

        def ready() -> bool:
            if not vm.powered_on():
                raise VMLabError(f"{name}'s QEMU died while booting: see {vm.dir}/qemu.log")
            return ssh_banner(vm.address, timeout=5.0)

        wait_for(ready, timeout, f"{name}'s sshd ({vm.address})", interval=1.0)

    def power_off(self, name: str) -> None:
        """Pull the plug: SIGKILL the VM's QEMU."""
        vm = self.vm(name)
        ref = _load_ref(vm.dir / "qemu.json")
        if ref is not None:
            ref.kill()
            child = self._children.pop(name, None)
            if child is not None:
                child.wait(timeout=STOP_TIMEOUT)
            wait_for(lambda: not ref.alive(), STOP_TIMEOUT, f"{name}'s QEMU to die", 0.05)
        (vm.dir / "qemu.json").unlink(missing_ok=True)

    def stop(self, name: str, timeout: float = 60.0) -> None:
        """Shut the VM down cleanly (ACPI power button through QMP); SIGKILL after timeout."""
        vm = self.vm(name)
        ref = vm.qemu
        if ref is None:
            return
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(vm.dir / "qmp.sock"))
            sock.recv(4096)
            sock.sendall(b'{"execute":"qmp_capabilities"}\n')
            sock.recv(4096)
            sock.sendall(b'{"execute":"system_powerdown"}\n')
            sock.recv(4096)
        with contextlib.suppress(VMLabError):
            wait_for(lambda: not ref.alive(), timeout, f"{name} to shut down", 0.5)
        self.power_off(name)

    def leave_running(self) -> None:
        """The VMs and BMCs stay up after this process (``labctl`` and the next run find them
        by their saved references): let go of their process handles without the "still
        running" warning each would give when collected."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            self._children.clear()

    def teardown(self) -> None:
        """No QEMU, no namespace, no overlays or LUNs left (the cached image stays)."""
        for vm in self.vms():
            self.power_off(vm.name)
            bmc = _load_ref(vm.dir / "bmc" / "ipmi_sim.json")
            if bmc is not None:
                bmc.kill()
                child = self._children.pop(f"bmc:{vm.name}", None)
                if child is not None:
                    child.wait(timeout=STOP_TIMEOUT)
                (vm.dir / "bmc" / "ipmi_sim.json").unlink(missing_ok=True)
            for leftover in ("disk.qcow2", "qmp.sock", "console.log", "qemu.log"):
                (vm.dir / leftover).unlink(missing_ok=True)
        for _, path, _ in self.luns():
            path.unlink(missing_ok=True)
        if NETNS in _netns_list():
            _run(["ip", "netns", "delete", NETNS])
        if Path("/sys/class/net", UPLINK).exists():
            _run(["ip", "link", "delete", UPLINK])

    # -- inside a VM -----------------------------------------------------------------------------
    def ssh_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """ssh to the VM as root with the lab's password (sshpass-free: SSH_ASKPASS)."""
        vm = self.vm(name)
        known = self.root / "known_hosts"
        lines = [
            f"{v.address} {' '.join(v.ssh_host_key())}"
            for v in self.vms()
            if (v.dir / "ssh_host_ed25519_key.pub").exists()
        ]
        known.write_text("\n".join(lines) + "\n")
        return [
            "ssh", "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "-o", "PubkeyAuthentication=no", "-o", "ConnectTimeout=30",
            "-o", "NumberOfPasswordPrompts=1", f"root@{vm.address}", "--",
            " ".join(shlex_quote(a) for a in argv),
        ]  # fmt: skip

    def ssh(
        self, name: str, argv: Sequence[str], *, timeout: float = 120, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in the VM over ssh (password through SSH_ASKPASS); output as text."""
        vm = self.vm(name)
        askpass = self.root / "askpass"
        if not askpass.exists():
            _write(askpass, '#!/bin/sh\ncat "$(dirname "$0")/root-password"\n', 0o700)
        env = {
            **_env(),
            "SSH_ASKPASS": str(askpass),
            "SSH_ASKPASS_REQUIRE": "force",
            "DISPLAY": "none",
        }
        del vm
        return subprocess.run(
            self.ssh_argv(name, argv), capture_output=True, text=True, timeout=timeout,
            env=env, stdin=subprocess.DEVNULL, check=check,
        )  # fmt: skip


def shlex_quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _netns_list() -> set[str]:
    out = _run(["ip", "netns", "list"], check=False)
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def root_password(root: Path, file: str = "root-password", nbytes: int = 18) -> str:
    """The lab's root password (made once, kept in ROOT/root-password, mode 0600); ``file``:
    another secret of the lab made the same way (the BMCs' password: at most 20 bytes)."""
    path = root / file
    if path.exists():
        return path.read_text().strip()
    root.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password


# --- CLI -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="labctl", description="Haven storage lab: three Debian VMs sharing disks."
    )
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="lab state directory")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (or reuse) the cached image")
    create = sub.add_parser("create", help="build, make overlays/LUNs/network, boot all VMs")
    create.add_argument("--fresh", action="store_true", help="new overlays and LUNs first")
    create.add_argument("--no-wait", action="store_true")
    for cmd in ("start", "stop"):
        sub.add_parser(cmd, help=f"{cmd} every VM (or the ones named)").add_argument(
            "names", nargs="*"
        )
    for cmd in ("power-on", "power-off"):
        sub.add_parser(cmd).add_argument("name")
    status = sub.add_parser("status")
    status.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="connection details of one VM")
    show.add_argument("name")
    show.add_argument("--secrets", action="store_true")
    sub.add_parser("teardown", help="no QEMU, no namespace, no overlays (image cache kept)")
    chassis = sub.add_parser("chassis", help="the BMC's chassis_control program (ipmi_sim)")
    chassis.add_argument("name")
    chassis.add_argument("op")
    chassis.add_argument("args", nargs="*")
    ssh = sub.add_parser("ssh", help="run a command in a VM: labctl ssh NAME -- CMD...")
    ssh.add_argument("name")
    ssh.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        lab = StorageLab(args.root)
        started = time.monotonic()
        if args.command == "build":
            times = lab.build()
            print(json.dumps(times or {"cached": True}), f"{time.monotonic() - started:.1f} s")
        elif args.command == "create":
            times = lab.create(fresh=args.fresh, wait=not args.no_wait)
            print(json.dumps(times), f"{time.monotonic() - started:.1f} s")
        elif args.command == "start":
            for name in args.names or lab.names():
                lab.power_on(name, wait=False)
            for name in args.names or lab.names():
                lab.wait_ready(name)
            print(f"sshd up in {time.monotonic() - started:.1f} s")
        elif args.command == "stop":
            for name in args.names or lab.names():
                lab.stop(name)
        elif args.command == "power-on":
            lab.power_on(args.name, wait=False)
        elif args.command == "power-off":
            lab.power_off(args.name)
        elif args.command == "status":
            _print_status(lab, as_json=args.json)
        elif args.command == "show":
            vm = lab.vm(args.name)
            secret = vm.root_password if args.secrets else "(hidden: --secrets)"
            for key, value in (
                ("name", vm.name),
                ("address", vm.address),
                ("ssh", f"root@{vm.address}"),
                ("fingerprint", vm.fingerprint()),
                ("root_password", secret),
                ("dir", vm.dir),
            ):
                print(f"{key:<14} {value}")
        elif args.command == "teardown":
            lab.teardown()
        elif args.command == "chassis":
            out = lab.chassis(args.name, args.op, args.args)
            if out:
                print(out)
        elif args.command == "ssh":
            cmd = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            proc = lab.ssh(args.name, cmd, timeout=3600)
            sys.stdout.write(proc.stdout)
            sys.stderr.write(proc.stderr)
            return proc.returncode
    except VMLabError as exc:
        # ipmi_sim reads errors of its chassis program from stdout.
        stream = sys.stdout if args.command == "chassis" else sys.stderr
        print(f"labctl: {exc}", file=stream)
        return 1
    return 0


def _print_status(lab: StorageLab, *, as_json: bool) -> None:
    rows = lab.status()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'NAME':<6} {'ADDRESS':<12} {'POWER':<5} {'QEMU':>8} SSHD")
    for r in rows:
        print(
            f"{r['name']!s:<6} {r['address']!s:<12} {r['power']!s:<5} "
            f"{r['qemu_pid'] or '-'!s:>8} {'yes' if r['sshd'] else 'no'}"
        )


if __name__ == "__main__":
    sys.exit(main())
