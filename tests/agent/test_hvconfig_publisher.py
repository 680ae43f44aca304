"""Migration settings, the publisher's buffering, and heartbeats."""

from __future__ import annotations

import datetime
import stat
import threading
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from agent.heartbeat import HeartbeatThread, build_heartbeat
from agent.hypervisor import LibvirtHypervisor
from agent.protocol import Event, Heartbeat, Result
from agent.publisher import Publisher

from .conftest import EventLog, Harness, domain_xml, unique


def test_configure_migration_writes_libvirt_settings(harness: Harness, tmp_path: Path) -> None:
    (tmp_path / "qemu.conf").write_text('user = "root"\nmigration_address = "1.2.3.4"\n')
    args = {
        "listen_address": "10.88.0.2",
        "migration_address": "10.88.0.2",
        "port_min": 49200,
        "port_max": 49210,
    }
    first = harness.run("configure_migration", **args)
    assert first.ok, first.error
    assert first.data["restart_required"] is True
    qemu = (tmp_path / "qemu.conf").read_text()
    assert 'user = "root"' in qemu
    assert qemu.count("migration_address") == 1 and 'migration_address = "10.88.0.2"' in qemu
    assert "migration_port_min = 49200" in qemu and "migration_port_max = 49210" in qemu
    libvirtd = (tmp_path / "libvirtd.conf").read_text()
    assert 'listen_addr = "10.88.0.2"' in libvirtd and "listen_tcp = 1" in libvirtd
    again = harness.run("configure_migration", **args)
    assert again.ok and again.data["changed"] == [] and again.data["restart_required"] is False
    tls = harness.run("configure_migration", **{**args, "transport": "tls"})
    assert not tls.ok and "needs ca_certificate and certificate" in tls.error.message
    assert "listen_tls = 1" not in (tmp_path / "libvirtd.conf").read_text()  # nothing written


def _ca(name: str) -> tuple[Any, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _sign(csr_pem: str, ca: tuple[Any, Any], public_key: Any = None) -> str:
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca[0].subject)
        .public_key(public_key or csr.public_key())
        .serial_number(2)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca[1], hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_tls_the_key_stays_on_the_host_and_only_the_cas_certificate_for_it_installs(
    harness: Harness, tmp_path: Path
) -> None:
    pki = harness.dispatcher.pki_dir
    first = harness.run("tls_request")
    assert first.ok, first.error
    assert first.data["new_key"] is True and "PRIVATE" not in first.data["csr"]
    key_file = pki / "libvirt" / "private" / "serverkey.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    again = harness.run("tls_request")  # the same key again, a new request for it
    assert again.data["new_key"] is False
    csr = x509.load_pem_x509_csr(again.data["csr"].encode())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "testhost"
    ca, other_ca = _ca("cluster CA"), _ca("another CA")
    ca_pem = ca[0].public_bytes(serialization.Encoding.PEM).decode()
    args = {
        "listen_address": "10.88.0.2",
        "migration_address": "10.88.0.2",
        "transport": "tls",
        "ca_certificate": ca_pem,
    }
    wrong_ca = harness.run(
        "configure_migration", **args, certificate=_sign(again.data["csr"], other_ca)
    )
    assert not wrong_ca.ok and "not signed by that CA" in wrong_ca.error.message
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    wrong_key = harness.run(
        "configure_migration", **args, certificate=_sign(again.data["csr"], ca, stranger)
    )
    assert not wrong_key.ok and "not for this host's TLS key" in wrong_key.error.message
    assert not (pki / "CA" / "cacert.pem").exists()  # a refused certificate wrote nothing
    cert_pem = _sign(again.data["csr"], ca)
    ok = harness.run("configure_migration", **args, certificate=cert_pem)
    assert ok.ok, ok.error
    assert ok.data["restart_required"] is True
    assert (pki / "CA" / "cacert.pem").read_text() == ca_pem
    for name in ("servercert.pem", "clientcert.pem"):
        assert (pki / "libvirt" / name).read_text() == cert_pem
    client_key = pki / "libvirt" / "private" / "clientkey.pem"
    assert client_key.read_bytes() == key_file.read_bytes()
    assert stat.S_IMODE(client_key.stat().st_mode) == 0o600
    libvirtd = (tmp_path / "libvirtd.conf").read_text()
    for line in (
        "listen_tls = 1",
        "listen_tcp = 0",  # plain TCP off
        "tls_no_verify_certificate = 0",  # clients need a certificate of the CA
        f'key_file = "{key_file}"',
        f'ca_file = "{pki}/CA/cacert.pem"',
    ):
        assert line in libvirtd
    same = harness.run("configure_migration", **args, certificate=cert_pem)
    assert same.ok and same.data["changed"] == [] and same.data["restart_required"] is False


class FlakySender:
    """Fails while `down` is set, like a broker that went away."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.sent: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        if self.down.is_set():
            raise ConnectionError("broker away")
        self.sent.append(message)


def test_publisher_buffers_while_the_broker_is_away() -> None:
    sender = FlakySender()
    sender.down.set()
    pub = Publisher(sender, backoff_max_s=0.2)
    pub.start()
    pub.publish(Result("h", "c1", "start", True))
    pub.publish(Event("h", "lifecycle", "g", "u", "crashed", "failed", seq=1))
    for seq in range(1, 4):
        pub.publish(Heartbeat("h", "0", seq, 1.0, True, None, 1, 1, 1, []))
    time.sleep(0.3)
    assert sender.sent == []
    sender.down.clear()
    deadline = time.monotonic() + 3
    while len(sender.sent) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    pub.stop()
    kinds = [(m["kind"], m.get("id") or m.get("seq")) for m in sender.sent]
    assert kinds == [("result", "c1"), ("event", 1), ("heartbeat", 3)]  # in order; newest beat


def test_heartbeat_content(harness: Harness, test_hv: LibvirtHypervisor) -> None:
    name = unique("g")
    harness.run("define", xml=domain_xml(name))
    harness.run("start", guest=name)
    beat = build_heartbeat("h1", test_hv, 1, 1.0)
    assert beat.libvirt_connected and beat.agent_version
    assert beat.cpus and beat.memory_total_mib and beat.memory_free_mib is not None
    assert beat.guests is not None
    assert name in {g.name for g in beat.guests if g.state == "running"}


def test_heartbeat_without_libvirt_says_unknown(events: EventLog) -> None:
    beat = build_heartbeat("h1", LibvirtHypervisor("qemu+tcp://127.0.0.1:1/system", events), 1, 1.0)
    assert beat.libvirt_connected is False and beat.guests is None


def test_heartbeat_thread_beats_on_time(test_hv: LibvirtHypervisor) -> None:
    beats: list[Heartbeat] = []
    thread = HeartbeatThread("h1", test_hv, beats.append, interval_s=0.1)
    thread.start()
    time.sleep(0.55)
    thread.stop()
    assert 4 <= len(beats) <= 7
    assert [b.seq for b in beats] == list(range(1, len(beats) + 1))
