"""Hypervisor configuration: libvirt's migration settings.

What the seed article did with `xend-relocation-server` / `xend-relocation-address` is, with
libvirt, a few settings in `libvirtd.conf` (where the daemon listens, over which transport) and
`qemu.conf` (the address and port range QEMU's migration stream uses). The agent owns one marked
block in each file; keys it manages are removed from the rest of the file so exactly one value
applies. libvirtd reads these at start: the result says whether a restart is required.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agent import names
from agent.errors import AgentError

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

    def libvirtd(self) -> dict[str, str]:
        return {
            "listen_tcp": "1" if self.transport == "tcp" else "0",
            "listen_tls": "1" if self.transport == "tls" else "0",
            "listen_addr": f'"{self.listen_address}"',
        }

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
    tmp = path.with_name(path.name + ".haven-tmp")
    tmp.write_text(new)
    os.replace(tmp, path)
    return True


def apply(config_dir: Path, settings: MigrationSettings) -> dict[str, object]:
    """Write the settings into config_dir/{libvirtd,qemu}.conf; idempotent."""
    checked = settings.validated()
    if not config_dir.is_dir():
        raise AgentError("not_found", f"libvirt config directory {config_dir} does not exist")
    changed = []
    for filename, values in (("libvirtd.conf", checked.libvirtd()), ("qemu.conf", checked.qemu())):
        if _write(config_dir / filename, values):
            changed.append(str(config_dir / filename))
    return {
        "files": [str(config_dir / "libvirtd.conf"), str(config_dir / "qemu.conf")],
        "changed": changed,
        "restart_required": bool(changed),
        "settings": {**checked.libvirtd(), **checked.qemu()},
    }
