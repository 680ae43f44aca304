"""The lab really works: hosts, libvirt over TCP, SSH, live migration, fencing, teardown.

These run against real namespaces, daemons and QEMU (TCG); see deploy/lab/README.md. Tests run
in file order on one module-scoped lab; the last one tears it down and checks nothing is left.
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path

import haven_lab
import libvirt
import paramiko
import pytest
from haven_lab import wait_for

from .conftest import HOSTS, LAB_DIR, BuiltLab

pytestmark = pytest.mark.lab

MIGRATE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)
# What an agent does first inside its host: who am I, where am I, my local libvirtd.
AGENT_LIKE = """
import os, socket, sys, time, libvirt
conn = libvirt.open("qemu:///system")
print(socket.gethostname(), os.getcwd(), conn.getHostname(), flush=True)
time.sleep(60)
"""
SHADOW_DIGEST = hashlib.sha256(Path("/etc/shadow").read_bytes()).hexdigest()


def _quiet_libvirt(_ctx: object, _err: object) -> None:
    """Errors arrive as exceptions; keep libvirt from also printing them."""


libvirt.registerErrorHandler(_quiet_libvirt, None)


def _ticks(log: Path) -> list[int]:
    text = log.read_text() if log.exists() else ""
    return [int(n) for n in re.findall(r"tick (\d+)", text)]


def _fence(agent: str, options: dict[str, str]) -> subprocess.CompletedProcess[str]:
    stdin = "".join(f"{key}={value}\n" for key, value in options.items())
    return subprocess.run([agent], input=stdin, capture_output=True, text=True, timeout=60)


def _assert_powered_off(lab: haven_lab.Lab, name: str) -> None:
    host = lab.host(name)
    assert not host.powered_on()
    assert host.pid1() is None
    assert haven_lab._netns_pids(host.netns) == []
    assert not haven_lab.tcp_open(host.address, haven_lab.LIBVIRT_PORT, 0.5)
    with pytest.raises(libvirt.libvirtError):
        libvirt.open(host.libvirt_uri)


def _tick_guest_xml(lab: haven_lab.Lab, name: str) -> str:
    kernel = lab.root / "tick.elf"
    if not kernel.exists():
        build = [str(LAB_DIR / "guest" / "build"), str(lab.root)]
        subprocess.run(build, check=True, capture_output=True)
    render = subprocess.run(
        [str(LAB_DIR / "guest" / "domain-xml"), name, "--kernel", str(kernel)],
        check=True,
        capture_output=True,
        text=True,
    )
    return render.stdout


def test_three_hosts_come_up(built_lab: BuiltLab) -> None:
    lab = built_lab.lab
    assert built_lab.create_seconds < 15
    rows = lab.status()
    assert [r["name"] for r in rows] == list(HOSTS)
    assert [r["address"] for r in rows] == ["10.88.0.5", "10.88.0.6", "10.88.0.7"]
    for row in rows:
        assert row["power"] == "on" and row["libvirtd"] and row["sshd"] and row["cable"] == "up"
    for name in HOSTS:
        inside = lab.run_in(name, ["hostname"], check=True)
        assert inside.stdout.strip() == name
        routes = lab.run_in(name, ["ip", "route"], check=True).stdout
        assert "default" not in routes
    # The host really is its own PID namespace with a shell as PID 1.
    assert lab.run_in("et-virt05", ["cat", "/proc/1/comm"]).stdout.strip() == "bash"


def test_create_is_idempotent(built_lab: BuiltLab) -> None:
    lab = built_lab.lab
    before = {h.name: (h.pid1(), h.host_uuid, h.root_password) for h in lab.hosts()}
    lab.create(HOSTS)
    after = {h.name: (h.pid1(), h.host_uuid, h.root_password) for h in lab.hosts()}
    assert after == before


def test_each_libvirtd_answers_on_its_tcp_uri(built_lab: BuiltLab) -> None:
    uuids = set()
    for host in built_lab.lab.hosts():
        conn = libvirt.open(host.libvirt_uri)
        try:
            assert conn.getHostname() == host.name
            caps = conn.getCapabilities()
        finally:
            conn.close()
        match = re.search(r"<uuid>([0-9a-f-]+)</uuid>", caps)
        assert match and match.group(1) == host.host_uuid
        uuids.add(match.group(1))
    assert len(uuids) == len(HOSTS)


def test_ssh_password_login_with_pinned_host_key(built_lab: BuiltLab) -> None:
    for host in built_lab.lab.hosts():
        kind, blob = host.ssh_host_key()
        key = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.get_host_keys().add(host.address, kind, key)
        client.connect(
            host.address,
            port=host.ssh_port,
            username="root",
            password=host.root_password,
            allow_agent=False,
            look_for_keys=False,
            timeout=10,
        )
        try:
            _, out, _ = client.exec_command("hostname")
            assert out.read().decode().strip() == host.name
        finally:
            client.close()

        wrong = paramiko.SSHClient()
        wrong.set_missing_host_key_policy(paramiko.RejectPolicy())
        wrong.get_host_keys().add(host.address, kind, key)
        with pytest.raises(paramiko.AuthenticationException):
            wrong.connect(
                host.address,
                username="root",
                password=host.root_password + "x",
                allow_agent=False,
                look_for_keys=False,
                timeout=10,
            )
        wrong.close()
    assert hashlib.sha256(Path("/etc/shadow").read_bytes()).hexdigest() == SHADOW_DIGEST


def test_each_host_has_its_own_fstab(built_lab: BuiltLab) -> None:
    """The agent's fstab_entry edits the host's /etc/fstab: never this machine's."""
    ours = Path("/etc/fstab").read_bytes()
    for name in built_lab.lab.names():
        seen = built_lab.lab.run_in(name, ["cat", "/etc/fstab"])
        assert seen.stdout.startswith("# Haven lab host fstab"), seen.stdout
    assert Path("/etc/fstab").read_bytes() == ours


def test_tick_guest_live_migrates_without_restarting(built_lab: BuiltLab) -> None:
    lab = built_lab.lab
    src, dst = lab.host("et-virt05"), lab.host("et-virt06")
    xml = _tick_guest_xml(lab, "tick-mig")
    serial = "log/libvirt/qemu/tick-mig-serial.log"
    src_conn, dst_conn = libvirt.open(src.libvirt_uri), libvirt.open(dst.libvirt_uri)
    try:
        dom = src_conn.defineXML(xml)
        dom.create()
        wait_for(lambda: len(_ticks(src.dir / serial)) >= 2, 10, "two ticks on the source")
        started = time.monotonic()
        dom.migrateToURI3(dst.libvirt_uri, {}, MIGRATE_FLAGS)
        migrate_seconds = time.monotonic() - started
        moved = dst_conn.lookupByName("tick-mig")
        assert moved.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert moved.isPersistent()
        assert "tick-mig" not in [d.name() for d in src_conn.listAllDomains()]
        stats = moved.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        last_on_src = _ticks(src.dir / serial)[-1]
        wait_for(lambda: len(_ticks(dst.dir / serial)) >= 2, 10, "ticks on the destination")
        on_dst = _ticks(dst.dir / serial)
        assert on_dst[0] > 1 and on_dst[0] >= last_on_src, "the guest was restarted"
        assert on_dst == list(range(on_dst[0], on_dst[0] + len(on_dst)))
        print(f"migration {migrate_seconds:.2f} s, downtime {stats.get('downtime')} ms")
        assert migrate_seconds < 10
        moved.destroy()
        moved.undefine()
    finally:
        src_conn.close()
        dst_conn.close()


def test_a_process_run_inside_dies_with_the_power(built_lab: BuiltLab) -> None:
    lab = built_lab.lab
    with lab.popen_in(
        "et-virt05",
        [sys.executable, "-c", AGENT_LIKE],
        cwd=LAB_DIR,
        stdout=subprocess.PIPE,
        text=True,
    ) as agent:
        try:
            assert agent.stdout is not None
            assert agent.stdout.readline().split() == ["et-virt05", str(LAB_DIR), "et-virt05"]
            lab.power_off("et-virt05")
            assert agent.wait(timeout=5) == -9
        finally:
            agent.kill()
    lab.power_on("et-virt05")


def test_fence_ipmilan_through_the_bmc(built_lab: BuiltLab) -> None:
    lab = built_lab.lab
    host = lab.host("et-virt07")
    conn = libvirt.open(host.libvirt_uri)
    dom = conn.defineXML(_tick_guest_xml(lab, "tick-fence"))
    dom.create()
    qemu_pid = int((host.dir / "run/libvirt/qemu/tick-fence.pid").read_text())
    conn.close()
    options = host.fence_ipmilan_options()
    agent = "/usr/sbin/fence_ipmilan"

    status = _fence(agent, {**options, "action": "status"})
    assert (status.returncode, status.stdout.strip()) == (0, "Status: ON"), status.stderr
    started = time.monotonic()
    off = _fence(agent, {**options, "action": "off"})
    off_seconds = time.monotonic() - started
    assert off.returncode == 0, off.stderr
    _assert_powered_off(lab, host.name)
    assert not Path(f"/proc/{qemu_pid}").exists()
    assert _fence(agent, {**options, "action": "status"}).returncode == 2
    assert _fence(agent, {**options, "password": "wrong", "action": "status"}).returncode == 1

    started = time.monotonic()
    on = _fence(agent, {**options, "action": "on"})
    assert on.returncode == 0, on.stderr
    lab.wait_ready(host.name)
    on_seconds = time.monotonic() - started
    print(f"fence_ipmilan off {off_seconds:.2f} s, on until libvirtd answers {on_seconds:.2f} s")
    conn = libvirt.open(host.libvirt_uri)
    try:
        # A host that comes back still has the guest's definition, shut off.
        back = conn.lookupByName("tick-fence")
        assert back.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
        back.undefine()
    finally:
        conn.close()


def test_lab_fence_agent(built_lab: BuiltLab) -> None:
    lab = built_lab.lab
    agent = str(LAB_DIR / "fence_haven_lab")
    base = {"plug": "et-virt06", "lab_root": str(lab.root)}

    meta = subprocess.run([agent, "-o", "metadata"], capture_output=True, text=True, check=True)
    assert 'name="lab_root"' in meta.stdout and 'name="plug"' in meta.stdout
    listing = _fence(agent, {**base, "action": "list"})
    assert listing.stdout.split() == [f"{h.name},{h.address}" for h in lab.hosts()]

    assert _fence(agent, {**base, "action": "status"}).returncode == 0
    started = time.monotonic()
    assert _fence(agent, {**base, "action": "off"}).returncode == 0
    off_seconds = time.monotonic() - started
    _assert_powered_off(lab, "et-virt06")
    assert _fence(agent, {**base, "action": "status"}).returncode == 2
    assert _fence(agent, {**base, "action": "on"}).returncode == 0
    lab.wait_ready("et-virt06")
    print(f"fence_haven_lab off {off_seconds:.2f} s")
    assert _fence(agent, {**base, "plug": "no-such-host", "action": "status"}).returncode == 1


def test_net_cut_keeps_the_host_running(built_lab: BuiltLab) -> None:
    lab = built_lab.lab
    host = lab.host("et-virt05")
    lab.net_cut(host.name)
    try:
        assert lab.is_cut(host.name)
        assert not haven_lab.tcp_open(host.address, haven_lab.LIBVIRT_PORT, 0.5)
        assert host.powered_on()
        # From inside, its own libvirtd still answers.
        inside = lab.run_in(host.name, ["virsh", "-c", "qemu:///system", "hostname"])
        assert inside.stdout.strip() == host.name
    finally:
        lab.net_restore(host.name)
    wait_for(lambda: haven_lab.tcp_open(host.address, haven_lab.LIBVIRT_PORT, 0.5), 10, "cable")


def test_secrets_stay_out_of_logs(built_lab: BuiltLab) -> None:
    lab = built_lab.lab
    for host in lab.hosts():
        for log in [*host.dir.rglob("*.log")]:
            text = log.read_text(errors="replace")
            assert host.root_password not in text, log
            assert host.bmc_password not in text, log


def test_destroy_leaves_nothing(built_lab: BuiltLab) -> None:
    lab = built_lab.lab
    hosts = lab.hosts()
    plugs = [h.unshare for h in hosts]
    bmcs = [haven_lab._load_ref(h.dir / "bmc" / "ipmi_sim.json") for h in hosts]
    lab.destroy()
    lab.destroy()  # idempotent
    assert lab.hosts() == []
    assert not [n for n in haven_lab._netns_list() if n.startswith("haven")]
    assert not Path("/sys/class/net", haven_lab.BRIDGE).exists()
    assert not [n for n in Path("/sys/class/net").iterdir() if n.name.startswith("haven")]
    for ref in [*plugs, *bmcs]:
        assert ref is not None and not ref.alive()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(lab.root) not in mounts and "/run/netns/haven" not in mounts
    assert hashlib.sha256(Path("/etc/shadow").read_bytes()).hexdigest() == SHADOW_DIGEST
