"""Clusters, their hosts and the fence devices that can power a host off."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from agent import names
from console.clusters.choices import HostState
from console.core import crypto, validators


class Cluster(models.Model):
    """A set of hosts sharing storage that run each other's guests when one fails."""

    name = models.CharField(
        max_length=15, unique=True, validators=[validators.validate_cluster_name]
    )
    description = models.CharField(max_length=200, blank=True)
    cpu_overcommit = models.FloatField(
        default=4.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(64.0)],
        help_text="vCPUs a host may run per CPU, a hard limit beside memory "
        "(a host's own ratio wins); 0 = no limit.",
    )
    host_failures_to_tolerate = models.PositiveSmallIntegerField(
        default=1,
        validators=[MaxValueValidator(64)],
        help_text="Admission control: starting a protected guest is refused when the cluster "
        "could not restart every protected guest after losing this many hosts (the worst "
        "ones); 0 = off.",
    )
    rebalance = models.BooleanField(
        default=False,
        help_text="Live rebalancer: even out memory use across hosts by live migration.",
    )
    #: the cluster's CA for libvirt's TLS (console/bootstrap/pki.py): the certificate, and its
    #: key encrypted with the console's key (never in clear at rest)
    migration_ca_certificate = models.TextField(blank=True, editable=False)
    migration_ca_key_encrypted = models.TextField(blank=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Host(models.Model):
    """One hypervisor host running a Haven agent (consuming the queue ``agent.<name>``)."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="hosts")
    name = models.CharField(max_length=253, unique=True, validators=[validators.validate_hostname])
    address = models.CharField(max_length=253, validators=[validators.validate_address])
    state = models.CharField(max_length=16, choices=HostState.choices, default=HostState.NEW)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    state_reason = models.TextField(
        blank=True, editable=False, help_text="The HA engine's reason for the current state."
    )
    memory_total_mb = models.PositiveIntegerField(default=0)
    memory_free_mb = models.PositiveIntegerField(default=0)
    cpus = models.PositiveIntegerField(default=0)
    cpu_overcommit = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(64.0)],
        help_text="vCPUs this host may run per CPU (empty: the cluster's ratio; 0 = no limit).",
    )
    libvirt_uri = models.CharField(
        max_length=255,
        blank=True,
        validators=[validators.validate_libvirt_uri],
        help_text="How the other hosts reach this host's libvirtd for migration "
        "(default: qemu+tls://ADDRESS/system once the bootstrap installed its certificate, "
        "else qemu+tcp://ADDRESS/system).",
    )
    #: the host's libvirt TLS certificate the bootstrap issued and the agent installed (PEM)
    tls_certificate = models.TextField(blank=True, editable=False)
    host_uuid = models.CharField(max_length=36, blank=True)
    agent_version = models.CharField(max_length=32, blank=True)
    #: a person asked to drain the host and keep new guests off it
    maintenance = models.BooleanField(default=False)
    #: when a person confirmed the host is down (a manual fence), and who did
    acknowledged_down_at = models.DateTimeField(null=True, blank=True)
    acknowledged_down_by = models.CharField(max_length=150, blank=True)
    #: the SSH host key pinned at bootstrap (``SHA256:...``)
    ssh_fingerprint = models.CharField(max_length=100, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["cluster__name", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def queue(self) -> str:
        """The Celery queue this host's agent consumes."""
        return f"agent.{self.name}"


class FenceDevice(models.Model):
    """A ``fence_*`` agent and its parameters, able to power off one host (by plug/port).

    Ordinary parameters (``ip``, ``username``, ``lanplus`` ...) are stored as JSON; secret ones
    (``password`` ...) are stored encrypted and never shown back by the API.
    """

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="fence_devices")
    name = models.CharField(max_length=64, validators=[validators.validate_object_name])
    agent = models.CharField(max_length=64, validators=[validators.validate_fence_agent])
    parameters = models.JSONField(default=dict, blank=True)
    secret_parameters_encrypted = models.TextField(blank=True, editable=False)
    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="fence_devices")
    plug = models.CharField(max_length=64, blank=True)
    order = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])

    class Meta:
        ordering = ["host__name", "order", "name"]
        constraints = [
            models.UniqueConstraint(fields=["cluster", "name"], name="fence_device_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.agent} for {self.host_id and self.host.name})"

    @property
    def secret_parameters(self) -> dict[str, Any]:
        return crypto.decrypt_json(self.secret_parameters_encrypted)

    @secret_parameters.setter
    def secret_parameters(self, value: dict[str, Any]) -> None:
        self.secret_parameters_encrypted = crypto.encrypt_json(value)

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if not isinstance(self.parameters, dict):
            errors["parameters"] = "Parameters must be an object of name: value pairs."
        else:
            for key, value in self.parameters.items():
                if problem := parameter_error(key, value):
                    errors["parameters"] = problem
                    break
        if self.plug:
            try:
                names.fence_plug(self.plug)
            except names.InvalidName as exc:
                errors["plug"] = f"The plug must be {exc.rule}."
        if self.host_id and self.cluster_id and self.host.cluster_id != self.cluster_id:
            errors["host"] = f"Host {self.host.name} is not in cluster {self.cluster.name}."
        if errors:
            raise ValidationError(errors)


def parameter_error(key: Any, value: Any, *, secret: bool = False) -> str:
    """Why a fence parameter cannot be stored ('' = it can), by the agent's own grammar.

    Plain parameters may not be secrets (those are stored encrypted, apart); ``secret`` ones
    must be.
    """
    try:
        validators.validate_fence_parameter(key)
    except ValidationError as exc:
        return " ".join(exc.messages)
    if not secret and names.is_secret(key):
        return f"{key!r} is a secret: give it in secret_parameters so it is stored encrypted."
    if not isinstance(value, str | int | bool) or (secret and not isinstance(value, str)):
        return f"Parameter {key!r} must have a text, number or true/false value."
    return validators.fence_value_error(key, value)
