"""Failover domains (where a guest may run, and where it prefers to) and VM services."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from agent.protocol import HealthSpec
from console.clusters.models import Cluster, Host
from console.core import validators
from console.services import domainxml
from console.services.choices import DesiredState, ProbeKind, Recovery, ServiceState
from console.services.domainxml import Devices, parse_domain_xml, with_health, with_uuid


class FailoverDomain(models.Model):
    """Which hosts may run a guest and which it prefers (rgmanager's failover domain).

    - ``ordered``: only the online members with the best (lowest) priority are candidates.
    - ``restricted``: the guest never runs on a non-member; it waits instead.
    - ``nofailback``: a guest that moved away stays put when a better member returns.
    """

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="domains")
    name = models.CharField(max_length=64, validators=[validators.validate_object_name])
    ordered = models.BooleanField(default=False)
    restricted = models.BooleanField(default=False)
    nofailback = models.BooleanField(default=False)

    class Meta:
        ordering = ["cluster__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["cluster", "name"], name="domain_unique_name"),
        ]

    def __str__(self) -> str:
        return self.name


class FailoverDomainMember(models.Model):
    """A host in a failover domain; priority 1..100, lower is more preferred."""

    domain = models.ForeignKey(FailoverDomain, on_delete=models.CASCADE, related_name="members")
    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="domain_memberships")
    priority = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(100)]
    )

    class Meta:
        ordering = ["domain__name", "priority", "host__name"]
        constraints = [
            models.UniqueConstraint(fields=["domain", "host"], name="domain_member_once"),
        ]

    def __str__(self) -> str:
        return f"{self.host_id and self.host.name} ({self.priority})"


#: how the HA engine treats a service: recovery, limits, priority, moves (form and API alike)
POLICY_FIELDS = (
    "failover_domain",
    "recovery",
    "max_restarts",
    "restart_window_s",
    "max_relocations",
    "priority",
    "migratable",
    "protected",
)
#: a service's save-on-preempt, health-check and probe settings (form and API alike)
HEALTH_FIELDS = (
    "save_on_preempt",
    "health_watchdog",
    "health_panic",
    "health_agent_interval_s",
    "health_agent_misses",
    "probe",
    "probe_host",
    "probe_port",
    "probe_path",
    "probe_interval_s",
    "probe_misses",
)


class VmService(models.Model):
    """A guest under cluster control; the console keeps its libvirt definition."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="services")
    name = models.CharField(max_length=64, validators=[validators.validate_guest_name])
    domain_xml = models.TextField(help_text="The libvirt domain definition; its <name> must match.")
    memory_mb = models.PositiveIntegerField(editable=False, default=0)
    vcpus = models.PositiveIntegerField(editable=False, default=1)
    autostart = models.BooleanField(default=True)
    failover_domain = models.ForeignKey(
        FailoverDomain, on_delete=models.PROTECT, null=True, blank=True, related_name="services"
    )
    recovery = models.CharField(max_length=8, choices=Recovery.choices, default=Recovery.RESTART)
    max_restarts = models.PositiveIntegerField(default=0)
    restart_window_s = models.PositiveIntegerField(default=0)
    max_relocations = models.PositiveIntegerField(default=1)
    priority = models.IntegerField(
        default=0,
        validators=[MinValueValidator(0), MaxValueValidator(1000)],
        help_text="Higher is more important: started first, and may stop less important guests.",
    )
    migratable = models.BooleanField(default=True)
    protected = models.BooleanField(
        default=True,
        help_text="Admission control counts it: starting it is refused when the cluster could "
        "not restart it after losing its worst hosts. Off: it starts whatever the spare room.",
    )
    desired_state = models.CharField(
        max_length=8, choices=DesiredState.choices, default=DesiredState.STARTED
    )
    state = models.CharField(
        max_length=16, choices=ServiceState.choices, default=ServiceState.UNKNOWN
    )
    host = models.ForeignKey(
        Host, on_delete=models.SET_NULL, null=True, blank=True, related_name="services"
    )
    state_since = models.DateTimeField(null=True, blank=True)
    state_reason = models.TextField(
        blank=True, editable=False, help_text="The HA engine's reason for the current state."
    )
    target = models.ForeignKey(
        Host,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="incoming_services",
        help_text="Where a migrating or relocating guest is going.",
    )
    uuid = models.CharField(max_length=36, blank=True, editable=False)
    # --- health checks beyond "QEMU is alive" (each failure is a crash for the recovery policy)
    health_watchdog = models.BooleanField(
        default=False,
        help_text="Treat the guest's watchdog firing as a crash (an i6300esb watchdog with "
        "action none is added to the XML if it has none).",
    )
    health_panic = models.BooleanField(
        default=False,
        help_text="Treat a guest kernel panic (pvpanic) as a crash, even when QEMU keeps running "
        "(a pvpanic device is added to the XML if it has none).",
    )
    health_agent_interval_s = models.PositiveIntegerField(
        default=0,
        validators=[MaxValueValidator(3600)],
        help_text="Ping the guest's qemu-guest-agent (guest-ping) every this many seconds; "
        "0 = off.",
    )
    health_agent_misses = models.PositiveSmallIntegerField(
        default=3,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="Missed guest-pings in a row that count as a crash.",
    )
    probe = models.CharField(
        max_length=4,
        choices=ProbeKind.choices,
        default=ProbeKind.NONE,
        blank=True,
        help_text="Probe the guest's application from the host it runs on: a TCP connect or "
        "an HTTP GET; failures go through the recovery policy (restart in place first).",
    )
    probe_host = models.CharField(
        max_length=253,
        blank=True,
        validators=[validators.validate_address],
        help_text="The guest's service address (IP address or host name).",
    )
    probe_port = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(65535)],
    )
    probe_path = models.CharField(
        max_length=256,
        default="/",
        blank=True,
        validators=[validators.validate_url_path],
        help_text="HTTP probes: the path to GET (e.g. /health).",
    )
    probe_interval_s = models.PositiveIntegerField(
        default=5, validators=[MinValueValidator(1), MaxValueValidator(3600)]
    )
    probe_misses = models.PositiveSmallIntegerField(
        default=3,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="Failed probes in a row that count as a crash.",
    )
    save_on_preempt = models.BooleanField(
        default=True,
        help_text="When it is stopped to make room for a more important guest, save its state "
        "(libvirt managed save) if its storage allows, and resume it there when room returns.",
    )

    class Meta:
        ordering = ["cluster__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["cluster", "name"], name="service_unique_name"),
        ]

    def health_spec(self) -> HealthSpec:
        """The health checks as the agent reads them from the domain's metadata."""
        return HealthSpec(
            watchdog=self.health_watchdog,
            panic=self.health_panic,
            agent_interval_s=float(self.health_agent_interval_s),
            agent_misses=self.health_agent_misses,
            probe=self.probe,
            probe_host=self.probe_host,
            probe_port=self.probe_port or 0,
            probe_path=self.probe_path or "/",
            probe_interval_s=float(self.probe_interval_s),
            probe_misses=self.probe_misses,
        )

    def defined_xml(self) -> str:
        """The XML the agents define: the person's, with the health checks in its metadata
        (and the watchdog and panic devices those checks need)."""
        return with_health(self.domain_xml, self.health_spec())

    def save_refusal(self, devices: Devices | None = None) -> str:
        """Why a preempted guest is shut down instead of saved ("" = it is saved);
        ``devices``: its XML's, when already read."""
        if not self.save_on_preempt:
            return "saving is turned off for it"
        return (devices or domainxml.devices(self.domain_xml)).save_refusal

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Memory and vCPUs always come from the XML, so placement sees what libvirt will.

        The guest keeps one UUID for life: without one in the XML, libvirt would invent a new
        one on every host and refuse to redefine the guest where it was defined before.
        """
        info = parse_domain_xml(self.domain_xml, expected_name=self.name)
        self.memory_mb, self.vcpus = info.memory_mib, info.vcpus
        if info.uuid:
            self.uuid = info.uuid
        else:
            self.uuid = self.uuid or str(uuid.uuid4())
            self.domain_xml = with_uuid(self.domain_xml, self.uuid)
        super().save(*args, **kwargs)

    def clean(self) -> None:
        errors: dict[str, object] = {}
        if self.domain_xml:
            try:
                info = parse_domain_xml(self.domain_xml, expected_name=self.name or None)
            except ValidationError as exc:
                errors["domain_xml"] = exc.messages
            else:
                self.memory_mb, self.vcpus = info.memory_mib, info.vcpus
        domain, host = self.failover_domain, self.host
        if domain is not None and self.cluster_id and domain.cluster_id != self.cluster_id:
            errors["failover_domain"] = f"Failover domain {domain.name} belongs to another cluster."
        if host is not None and self.cluster_id and host.cluster_id != self.cluster_id:
            errors["host"] = f"Host {host.name} is not in this service's cluster."
        if self.probe:
            if not self.probe_host:
                errors["probe_host"] = "A probe needs the guest's service address."
            if not self.probe_port:
                errors["probe_port"] = "A probe needs the port of the guest's service."
            if self.probe == ProbeKind.HTTP and not self.probe_path:
                errors["probe_path"] = "An HTTP probe needs a path, e.g. /."
        if errors:
            raise ValidationError(errors)
