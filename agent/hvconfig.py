"""Hypervisor configuration: libvirt's migration settings.

What the seed article did with `xend-relocation-server` / `xend-relocation-address` is, with
libvirt, a few settings in `libvirtd.conf` (where the daemon listens, over which transport) and
`qemu.conf` (the address and port range QEMU's migration stream uses). The agent owns one marked
block in each file; keys it manages are removed from the rest of the file so exactly one value
applies. libvirtd reads these at start: the result says whether a restart is required.

TLS (``transport="tls"``, console/bootstrap/pki.py): ``tls_request`` makes the host's private
key under ``PKI/libvirt/private/`` (0600, kept when present; it never leaves the host) and
returns a certificate request for it; ``configure_migration`` then installs the certificate
the console signed and the cluster CA's certificate where libvirt looks for them as server and
as client (``PKI/CA/cacert.pem``, ``PKI/libvirt/{server,client}cert.pem``, the key also as
``clientkey.pem``), after checking that the certificate is the CA's and for this key, and
switches libvirtd to TLS only (``listen_tls = 1``, ``listen_tcp = 0``, client certificates
verified). ``PKI`` is ``/etc/pki`` (libvirt's client side reads only there).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import names
from agent.errors import AgentError
from agent.files import replace_file

BEGIN = "# BEGIN haven migration settings (managed by the Haven agent)"
END = "# END haven migration settings"
TRANSPORTS = ("tcp", "tls", "ssh")


@dataclass(frozen=True)
class MigrationSettings:
    listen_address: str
    migration_address: str
    port_min: int = 49152
    port_max: int = 49215
    transport: str = "tcp"

    def validated(self) -> MigrationSettings:
        if self.transport not in TRANSPORTS:
            raise AgentError("bad_request", f"transport must be one of {TRANSPORTS}")
        if not 1024 <= self.port_min <= self.port_max <= 65535:
            raise AgentError("bad_request", "need 1024 <= port_min <= port_max <= 65535")
        return MigrationSettings(
            names.ip_address(self.listen_address, "listen address"),
            names.ip_address(self.migration_address, "migration address"),
            self.port_min,
            self.port_max,
            self.transport,
        )

    def libvirtd(self, pki: Path | None = None) -> dict[str, str]:
        values = {
            "listen_tcp": "1" if self.transport == "tcp" else "0",
            "listen_tls": "1" if self.transport == "tls" else "0",
            "listen_addr": f'"{self.listen_address}"',
        }
        if self.transport == "tls" and pki is not None:
            files = tls_paths(pki)
            values.update(
                ca_file=f'"{files["ca"]}"',
                cert_file=f'"{files["server_cert"]}"',
                key_file=f'"{files["server_key"]}"',
                tls_no_verify_certificate="0",  # a client needs a certificate of the CA
            )
        return values

    def qemu(self) -> dict[str, str]:
        return {
            "migration_address": f'"{self.migration_address}"',
            "migration_host": f'"{self.migration_address}"',
            "migration_port_min": str(self.port_min),
            "migration_port_max": str(self.port_max),
        }


def _key(line: str) -> str | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#") or "=" not in stripped:
        return None
    return stripped.split("=", 1)[0].strip()


def render(existing: str, settings: dict[str, str]) -> str:
    """`existing` with our block replaced and managed keys removed elsewhere."""
    kept: list[str] = []
    inside = False
    for line in existing.splitlines():
        if line.strip() == BEGIN:
            inside = True
        elif line.strip() == END:
            inside = False
        elif not inside and _key(line) not in settings:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    # A value with a quote or a line break would end the setting and start another one.
    block = [BEGIN, *(f"{k} = {names.config_value(v)}" for k, v in settings.items()), END]
    return "\n".join([*kept, "", *block]).lstrip("\n") + "\n"


def _write(path: Path, settings: dict[str, str]) -> bool:
    old = path.read_text() if path.exists() else ""
    new = render(old, settings)
    if new == old:
        return False
    replace_file(path, new)
    return True


def apply(
    config_dir: Path,
    settings: MigrationSettings,
    *,
    pki: Path = Path("/etc/pki"),
    ca_certificate: str = "",
    certificate: str = "",
) -> dict[str, object]:
    """Write the settings into config_dir/{libvirtd,qemu}.conf (and, for TLS, the
    certificates under ``pki``); idempotent."""
    checked = settings.validated()
    if not config_dir.is_dir():
        raise AgentError("not_found", f"libvirt config directory {config_dir} does not exist")
    tls = checked.transport == "tls"
    if tls != bool(ca_certificate and certificate):
        raise AgentError(
            "bad_request",
            "transport tls needs ca_certificate and certificate (and only tls takes them)",
        )
    changed = install_certificates(pki, ca_certificate, certificate) if tls else []
    libvirtd = checked.libvirtd(pki)
    for filename, values in (("libvirtd.conf", libvirtd), ("qemu.conf", checked.qemu())):
        if _write(config_dir / filename, values):
            changed.append(str(config_dir / filename))
    return {
        "files": [str(config_dir / "libvirtd.conf"), str(config_dir / "qemu.conf")],
        "changed": changed,
        "restart_required": bool(changed),
        "settings": {**libvirtd, **checked.qemu()},
    }


# --- TLS ------------------------------------------------------------------------------------


def tls_paths(pki: Path) -> dict[str, Path]:
    """Where libvirt reads its TLS files (as server, and as client for peer-to-peer migration)."""
    return {
        "ca": pki / "CA" / "cacert.pem",
        "server_cert": pki / "libvirt" / "servercert.pem",
        "server_key": pki / "libvirt" / "private" / "serverkey.pem",
        "client_cert": pki / "libvirt" / "clientcert.pem",
        "client_key": pki / "libvirt" / "private" / "clientkey.pem",
    }


def _write_bytes(path: Path, data: bytes, mode: int) -> bool:
    """Write ``data`` with ``mode`` set before any byte is written; False when unchanged."""
    if path.exists() and path.read_bytes() == data:
        os.chmod(path, mode)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, data, mode)
    return True


def _private_key(pki: Path, *, create: bool) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    path = tls_paths(pki)["server_key"]
    if path.exists():
        try:
            return serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            if not create:
                raise AgentError("bad_request", f"{path} is not a private key") from exc
    elif not create:
        raise AgentError("not_found", f"no TLS key at {path}: run tls_request first")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_bytes(path, pem, 0o600)
    return key


def certificate_request(pki: Path, host: str) -> dict[str, object]:
    """A CSR for this host's key (made now when it has none); the key stays here."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    names.host_name(host)
    existed = tls_paths(pki)["server_key"].exists()
    key = _private_key(pki, create=True)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .sign(key, hashes.SHA256())
    )
    return {
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "key": str(tls_paths(pki)["server_key"]),
        "new_key": not existed,
    }


def install_certificates(pki: Path, ca_pem: str, cert_pem: str) -> list[str]:
    """Check and install the CA's and this host's certificate; the files that changed."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    try:
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except (ValueError, TypeError) as exc:
        raise AgentError("bad_request", "ca_certificate and certificate must be PEM") from exc
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise AgentError("bad_request", "the certificate is not signed by that CA") from exc
    key = _private_key(pki, create=False)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise AgentError("bad_request", "the certificate is not for this host's TLS key")
    files = tls_paths(pki)
    key_pem = files["server_key"].read_bytes()
    changed = []
    for path, data, mode in (
        (files["ca"], ca_pem.encode(), 0o644),
        (files["server_cert"], cert_pem.encode(), 0o644),
        (files["client_cert"], cert_pem.encode(), 0o644),
        (files["client_key"], key_pem, 0o600),
    ):
        if _write_bytes(path, data, mode):
            changed.append(str(path))
    return changed
