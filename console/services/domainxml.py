"""Reading what Haven needs from a libvirt domain definition, and nothing more.

The console keeps every guest's libvirt XML and defines it on whichever host starts it, so the
XML must parse, name the guest the service is named after, and say how much memory and how
many virtual CPUs it needs (placement uses both).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from django.core.exceptions import ValidationError

from agent.protocol import HEALTH_NS, HealthSpec

# libvirt's scaled-integer units (docs: formatdomain "memory" element), as bytes.
_UNITS = {
    "b": 1,
    "bytes": 1,
    "kb": 1000,
    "k": 1024,
    "kib": 1024,
    "mb": 1000**2,
    "m": 1024**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "g": 1024**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "t": 1024**4,
    "tib": 1024**4,
}
MAX_XML_BYTES = 1024 * 1024
# Bounds far above any real host (QEMU/KVM: 4096 vCPUs at most); also what the database holds.
MAX_MEMORY_MIB = 64 * 1024 * 1024  # 64 TiB
MAX_VCPUS = 4096


@dataclass(frozen=True)
class DomainInfo:
    name: str
    memory_mib: int
    vcpus: int
    uuid: str


def parse_domain_xml(text: str, expected_name: str | None = None) -> DomainInfo:
    """Validate a domain definition; raise ValidationError saying exactly what is wrong."""
    if not text or not text.strip():
        raise ValidationError("The libvirt domain XML is empty.", code="required")
    if len(text.encode()) > MAX_XML_BYTES:
        raise ValidationError("The libvirt domain XML is larger than 1 MiB.", code="too_large")
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise ValidationError(
            "The domain XML may not contain a DOCTYPE or entities.", code="invalid"
        )
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValidationError(f"The domain XML does not parse: {exc}.", code="parse") from exc
    if root.tag != "domain":
        raise ValidationError(
            f"The root element must be <domain>, not <{root.tag}>.", code="invalid"
        )
    name = (root.findtext("name") or "").strip()
    if not name:
        raise ValidationError("The domain XML has no <name>.", code="invalid")
    if expected_name is not None and name != expected_name:
        raise ValidationError(
            f"The domain XML names the guest {name!r}, but the service is {expected_name!r}: "
            "they must match.",
            code="name_mismatch",
        )
    memory_mib = _memory_mib(root)
    vcpus = _vcpus(root)
    return DomainInfo(
        name=name, memory_mib=memory_mib, vcpus=vcpus, uuid=(root.findtext("uuid") or "").strip()
    )


def with_uuid(text: str, guest_uuid: str) -> str:
    """The same XML with ``<uuid>`` added after ``<name>`` (text kept as the person wrote it)."""
    return re.sub(r"(</name\s*>)", rf"\1\n  <uuid>{guest_uuid}</uuid>", text, count=1)


def _memory_mib(root: ET.Element) -> int:
    element = root.find("memory")
    if element is None:
        element = root.find("currentMemory")
    if element is None or not (element.text or "").strip():
        raise ValidationError("The domain XML has no <memory> size.", code="invalid")
    unit = element.get("unit", "KiB").lower()
    if unit not in _UNITS:
        raise ValidationError(f"Unknown memory unit {element.get('unit')!r}.", code="invalid")
    raw = (element.text or "").strip()
    amount = _whole_number(raw, "memory size")
    if amount <= 0:
        raise ValidationError(f"The memory size must be positive, not {amount}.", code="invalid")
    size = amount * _UNITS[unit]
    mib = -(-size // (1024 * 1024))
    if mib > MAX_MEMORY_MIB:
        raise ValidationError(
            f"The memory size {raw} {element.get('unit', 'KiB')} is more than "
            f"{MAX_MEMORY_MIB // (1024 * 1024)} TiB: no host has that much.",
            code="invalid",
        )
    return int(mib)


def _whole_number(raw: str, what: str) -> int:
    try:
        return int(raw)
    except ValueError:
        message = f"The {what} {raw!r} is not a whole number."
        raise ValidationError(message, code="invalid") from None


def _vcpus(root: ET.Element) -> int:
    raw = (root.findtext("vcpu") or "1").strip()
    vcpus = _whole_number(raw, "vcpu count")
    if vcpus < 1:
        raise ValidationError(f"The vcpu count must be at least 1, not {vcpus}.", code="invalid")
    if vcpus > MAX_VCPUS:
        raise ValidationError(
            f"The vcpu count {raw} is more than {MAX_VCPUS}, the most a guest can have.",
            code="invalid",
        )
    return vcpus


def with_health(text: str, spec: HealthSpec) -> str:
    """The XML the agents define: `text` with the guest's health checks in its
    ``<metadata>`` (replacing an older ``<haven:health>``), and, when those checks need them
    and the XML has none, an i6300esb watchdog with action none (Haven's recovery policy acts,
    not the watchdog) and a pvpanic device. Without checks, `text` unchanged."""
    root = ET.fromstring(text)
    metadata = root.find("metadata")
    old = metadata.find(f"{{{HEALTH_NS}}}health") if metadata is not None else None
    if not spec.enabled() and old is None:
        return text
    ET.register_namespace("haven", HEALTH_NS)
    if metadata is None:
        metadata = ET.SubElement(root, "metadata")
    if old is not None:
        metadata.remove(old)
    if spec.enabled():
        metadata.append(ET.fromstring(spec.to_xml()))
    devices = root.find("devices")
    if devices is None and (spec.watchdog or spec.panic):
        devices = ET.SubElement(root, "devices")
    if devices is not None and spec.watchdog and devices.find("watchdog") is None:
        ET.SubElement(devices, "watchdog", {"model": "i6300esb", "action": "none"})
    if devices is not None and spec.panic and devices.find("panic") is None:
        ET.SubElement(devices, "panic", {"model": "isa"})
    return ET.tostring(root, encoding="unicode")


@dataclass(frozen=True)
class Devices:
    """What the engine needs from a guest's devices, read in one parse."""

    #: why libvirt's managed save cannot keep this guest's state safely ("" = it can)
    save_refusal: str
    #: its disks' sources (``file`` or ``dev``), in order
    disks: tuple[str, ...]


def devices(text: str) -> Devices:
    """The guest's devices as the engine reads them. Save: host devices and host file systems
    cannot be saved; a transient disk loses what the saved memory still refers to."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return Devices("its XML does not parse", ())
    devs = root.find("devices")
    if devs is None:
        return Devices("", ())
    disks = devs.findall("disk")
    sources = tuple(
        path
        for d in disks
        if (source := d.find("source")) is not None
        and (path := source.get("file") or source.get("dev"))
    )
    if devs.find("hostdev") is not None:
        refusal = "it has a host device (<hostdev>)"
    elif devs.find("filesystem") is not None:
        refusal = "it shares a host file system (<filesystem>)"
    elif any(d.find("transient") is not None for d in disks):
        refusal = "it has a transient disk"
    else:
        refusal = ""
    return Devices(refusal, sources)


def save_refusal(text: str) -> str:
    """Why libvirt's managed save cannot keep this guest's state safely ("" = it can)."""
    return devices(text).save_refusal
