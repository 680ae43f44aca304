"""The cluster's certificate authority for libvirt's TLS (live migration over ``qemu+tls``).

Each cluster has one small CA of its own, made the first time a host of it is bootstrapped:
its certificate (public) on the cluster row, its private key only encrypted with the console's
key (console/core/crypto.py, as fence passwords and sealing keys are), never in clear at rest
and never sent anywhere. A host's private key never leaves the host: the bootstrap asks the
agent for a certificate request (``tls_request``: the agent makes the key in
``/etc/pki/libvirt/private`` if it has none), the console signs it here for that host alone
(subject CN = the host's name, subjectAltName = its name and address, for both the server and
the client side of libvirt's TLS), and the agent installs it with the CA's certificate
(``configure_migration`` with ``transport=tls``; agent/hvconfig.py).

Both ends verify: a host's libvirtd accepts a TLS client only with a certificate of this CA
(``tls_no_verify_certificate = 0``), and a source host's libvirtd, connecting to
``qemu+tls://ADDRESS/system``, accepts the destination only if its certificate is of this CA
and names ADDRESS.
"""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.db import transaction

from console.clusters.models import Cluster
from console.core import crypto

CA_YEARS = 20
HOST_CERT_DAYS = 5 * 365
KEY_BITS = 2048  # what libvirt's own documentation (certtool) uses


class CertificateError(ValueError):
    """A certificate request that cannot be signed; the message says why (no secret)."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_ca(cluster_name: str) -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Haven"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Haven cluster {cluster_name} CA"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def ca_certificate(cluster: Cluster) -> str:
    """The cluster CA's certificate (PEM), made now if the cluster has none yet."""
    if cluster.migration_ca_certificate and cluster.migration_ca_key_encrypted:
        return cluster.migration_ca_certificate
    with transaction.atomic():
        row = Cluster.objects.select_for_update().get(pk=cluster.pk)
        if not (row.migration_ca_certificate and row.migration_ca_key_encrypted):
            cert_pem, key_pem = _new_ca(row.name)
            row.migration_ca_certificate = cert_pem
            row.migration_ca_key_encrypted = crypto.encrypt_json({"key": key_pem})
            row.save(update_fields=["migration_ca_certificate", "migration_ca_key_encrypted"])
            del key_pem
    cluster.migration_ca_certificate = row.migration_ca_certificate
    cluster.migration_ca_key_encrypted = row.migration_ca_key_encrypted
    return row.migration_ca_certificate


def _ca(cluster: Cluster) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    cert_pem = ca_certificate(cluster)
    key = serialization.load_pem_private_key(
        crypto.decrypt_json(cluster.migration_ca_key_encrypted)["key"].encode(), password=None
    )
    assert isinstance(key, rsa.RSAPrivateKey)
    return x509.load_pem_x509_certificate(cert_pem.encode()), key


def _alt_names(name: str, address: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(name)]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(address)))
    except ValueError:
        if address != name:
            names.append(x509.DNSName(address))
    return names


def issue_host_certificate(cluster: Cluster, name: str, address: str, csr_pem: str) -> str:
    """Sign the host's certificate request for ``name`` at ``address`` (PEM). Only the
    request's public key is taken from it: subject and names are the console's."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"the certificate request of {name} does not parse") from exc
    if not csr.is_signature_valid:
        raise CertificateError(f"the certificate request of {name} has a bad signature")
    public = csr.public_key()
    if not isinstance(public, rsa.RSAPublicKey) or public.key_size < KEY_BITS:
        raise CertificateError(f"the certificate request of {name} needs an RSA key of 2048+ bits")
    ca_cert, ca_key = _ca(cluster)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Haven"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, cluster.name),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=HOST_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,  # libvirt checks for both
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(_alt_names(name, address)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def describe(cert_pem: str) -> dict[str, str]:
    """What a page or a job result shows of a certificate (no secret in it)."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(":"),
    }
