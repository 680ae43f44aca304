"""Live migration over qemu+tls: the cluster CA the console keeps (console/bootstrap/pki.py),
each host's certificate issued from the agent's own request during the bootstrap, and the
migration URI the engine's moves use. The simulated hosts are console/ha/fakes.py's;
the real TLS migration between lab hosts is tests/lab/test_e2e.py."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from console.bootstrap import pki
from console.bootstrap import ssh as bootstrap
from console.clusters.models import Cluster, Host
from console.core import crypto
from console.ha import actions
from console.ha.fakes import FakeAgents, FakeRemoteHosts, fake_csr
from console.jobs.models import JobStatus
from tests.console.test_bootstrap_fake import KEY5, KEY6, fleet, spec  # noqa: F401

pytestmark = pytest.mark.django_db


def test_the_cluster_ca_key_is_only_encrypted_at_rest_and_signs_a_host_certificate() -> None:
    cluster = Cluster.objects.create(name="lab")
    ca_pem = pki.ca_certificate(cluster)
    row = Cluster.objects.get(pk=cluster.pk)
    assert row.migration_ca_certificate == ca_pem
    assert "PRIVATE KEY" not in row.migration_ca_key_encrypted  # Fernet token, not PEM
    assert "PRIVATE KEY" in crypto.decrypt_json(row.migration_ca_key_encrypted)["key"]
    assert pki.ca_certificate(row) == ca_pem  # made once
    cert_pem = pki.issue_host_certificate(row, "et-virt05", "10.88.0.5", fake_csr("whatever"))
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "et-virt05"
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.88.0.5")]
    assert alt.get_values_for_type(x509.DNSName) == ["et-virt05"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    other = Cluster.objects.create(name="other")
    assert pki.ca_certificate(other) != ca_pem  # one CA per cluster


def test_a_bad_certificate_request_is_refused_in_plain_words() -> None:
    cluster = Cluster.objects.create(name="lab")
    with pytest.raises(pki.CertificateError, match="does not parse"):
        pki.issue_host_certificate(cluster, "h", "10.0.0.1", "not a request")
    key = ec.generate_private_key(ec.SECP256R1())
    small = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "h")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    with pytest.raises(pki.CertificateError, match="RSA key"):
        pki.issue_host_certificate(cluster, "h", "10.0.0.1", small)


def test_migrations_go_over_tls_to_a_host_with_a_certificate() -> None:
    cluster = Cluster.objects.create(name="lab")
    host = Host.objects.create(cluster=cluster, name="et-virt06", address="10.88.0.6")
    assert actions.libvirt_uri(host) == "qemu+tcp://10.88.0.6/system"  # never bootstrapped
    from tests.console.views_support import login, text

    admin = login("admin")
    page = text(admin.get(f"/clusters/{cluster.pk}/hosts/{host.pk}/"))
    assert 'id="tls-missing"' in page and "Repair gives it one" in page
    host.tls_certificate = pki.issue_host_certificate(
        cluster, host.name, host.address, fake_csr("x")
    )
    assert actions.libvirt_uri(host) == "qemu+tls://10.88.0.6/system"
    host.save()
    page = text(admin.get(f"/clusters/{cluster.pk}/hosts/{host.pk}/"))
    assert '<code id="migration-uri">qemu+tls://10.88.0.6/system</code>' in page
    assert 'id="tls-missing"' not in page
    assert "certificate CN=et-virt06,OU=lab,O=Haven of CN=Haven cluster lab CA,O=Haven" in page
    host.libvirt_uri = "qemu+ssh://root@10.88.0.6/system"  # a person's choice wins
    assert actions.libvirt_uri(host) == "qemu+ssh://root@10.88.0.6/system"


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_bootstrap_issues_each_host_a_certificate_and_restarts_libvirtd(
    fleet: tuple[FakeRemoteHosts, FakeAgents],  # noqa: F811
) -> None:
    hosts, agents = fleet
    h5 = hosts.add("et-virt05", "10.88.0.5", "pw5", KEY5)
    h6 = hosts.add("et-virt06", "10.88.0.6", "pw6", KEY6, init="init")
    specs = [
        spec("et-virt05", "10.88.0.5", "pw5", KEY5),
        spec("et-virt06", "10.88.0.6", "pw6", KEY6),
    ]
    job = bootstrap.create_bootstrap_job("lab", specs, actor="tester")
    job = bootstrap.run_bootstrap(job.pk, {s.name: s.password for s in specs})
    assert job.status == JobStatus.SUCCEEDED, job.explanation
    ca = x509.load_pem_x509_certificate(
        Cluster.objects.get(name="lab").migration_ca_certificate.encode()
    )
    sent: dict[str, list[dict[str, Any]]] = {}
    for name, command in agents.commands:
        sent.setdefault(name, []).append(command)
    for name, remote, init in (("et-virt05", h5, "systemd"), ("et-virt06", h6, "init")):
        host = Host.objects.get(name=name)
        cert = x509.load_pem_x509_certificate(host.tls_certificate.encode())
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        kinds = [c["kind"] for c in sent[name]]
        assert kinds.index("tls_request") < kinds.index("configure_migration")
        configure = next(c for c in sent[name] if c["kind"] == "configure_migration")
        assert configure["args"]["transport"] == "tls"
        assert configure["args"]["certificate"] == host.tls_certificate
        assert "PRIVATE KEY" not in repr(sent[name])  # no key travels: the host keeps its own
        restart = [
            argv for argv in remote.ran if argv[:2] == ["sh", "-c"] and "haven-libvirtd" in argv
        ]
        assert restart and restart[0][-1] == init
        register = job.steps.get(host=host, kind="bootstrap.register").result["migration"]
        assert register["transport"] == "tls" and register["libvirtd_restarted"] is True
        assert register["certificate"]["subject"] == f"CN={name},OU=lab,O=Haven"
        assert actions.libvirt_uri(host) == f"qemu+tls://{host.address}/system"


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_plain_tcp_is_kept_when_a_person_chose_it(
    fleet: tuple[FakeRemoteHosts, FakeAgents],  # noqa: F811
    settings: Any,
) -> None:
    hosts, agents = fleet
    settings.HAVEN_MIGRATION_TRANSPORT = "tcp"
    hosts.add("et-virt05", "10.88.0.5", "pw5", KEY5)
    specs = [spec("et-virt05", "10.88.0.5", "pw5", KEY5)]
    job = bootstrap.create_bootstrap_job("lab", specs, actor="tester")
    job = bootstrap.run_bootstrap(job.pk, {s.name: s.password for s in specs})
    assert job.status == JobStatus.SUCCEEDED, job.explanation
    assert "tls_request" not in [c["kind"] for _, c in agents.commands]
    assert actions.libvirt_uri(Host.objects.get(name="et-virt05")) == "qemu+tcp://10.88.0.5/system"
