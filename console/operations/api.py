"""API actions for operations: each answers 202 with the job that carries it out."""

from __future__ import annotations

from rest_framework import serializers, status
from rest_framework.fields import empty
from rest_framework.response import Response

from console.core.units import mib
from console.jobs.api.serializers import JobSerializer
from console.jobs.models import Job
from console.services.models import FailoverDomain


class MoveSerializer(serializers.Serializer):  # type: ignore[type-arg]
    host = serializers.CharField(
        max_length=253, help_text="Target host name, or 'best' to let Haven choose."
    )


class MaintenanceSerializer(serializers.Serializer):  # type: ignore[type-arg]
    on = serializers.BooleanField(help_text="true: drain the host; false: take guests again")


class ImportSerializer(serializers.Serializer):  # type: ignore[type-arg]
    guests = serializers.ListField(child=serializers.CharField(max_length=64), min_length=1)
    failover_domain = serializers.PrimaryKeyRelatedField(
        queryset=FailoverDomain.objects.all(), required=False, allow_null=True
    )


class WhatIfSerializer(serializers.Serializer):  # type: ignore[type-arg]
    host = serializers.CharField(max_length=253, help_text="The host that fails (by name).")
    event = serializers.ChoiceField(
        choices=[("power_off", "the host loses power"), ("maintenance", "maintenance on")],
        default="power_off",
    )


class GuestFateSerializer(serializers.Serializer):  # type: ignore[type-arg]
    service = serializers.CharField()
    before = serializers.CharField(allow_null=True, help_text="where it runs now")
    after = serializers.CharField(allow_null=True, help_text="where it would run afterwards")
    outcome = serializers.ChoiceField(
        choices=["stays", "starts", "restarts", "migrates", "waits", "preempted", "stopped"]
    )
    seconds = serializers.FloatField(
        allow_null=True, help_text="predicted time from the event until it runs again"
    )
    reason = serializers.CharField(allow_blank=True)


class PredictionSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """The engine's own simulator run on the live cluster: nothing is sent to any host."""

    cluster = serializers.CharField()
    host = serializers.CharField()
    event = serializers.CharField()
    fenced = serializers.ListField(child=serializers.CharField())
    timings = serializers.DictField(child=serializers.FloatField())
    guests = GuestFateSerializer(many=True)
    notes = serializers.ListField(child=serializers.CharField())


class FailoverSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Admission control's view: can the cluster restart every protected guest after losing
    its worst hosts?"""

    host_failures_to_tolerate = serializers.IntegerField()
    survives = serializers.IntegerField(help_text="host failures (the worst ones) it survives")
    summary = serializers.CharField(help_text='e.g. "survives 1 host failure; 3.2 GiB spare"')
    ok = serializers.BooleanField(allow_null=True)
    spare_mb = serializers.IntegerField(
        allow_null=True,
        **mib("The smallest margin over the priorities checked (negative: short by that much)"),
    )
    needed_mb = serializers.IntegerField(
        allow_null=True,
        **mib("At the deciding priority: the memory needed after the worst failures"),
    )
    free_mb = serializers.IntegerField(
        allow_null=True, **mib("At the deciding priority: the memory free for it")
    )
    worst_hosts = serializers.ListField(child=serializers.CharField())


class RebalanceMoveSerializer(serializers.Serializer):  # type: ignore[type-arg]
    service = serializers.CharField()
    from_host = serializers.CharField()
    to_host = serializers.CharField()
    gain = serializers.FloatField(help_text="how much the gap between the two narrows")
    source_use = serializers.FloatField(help_text="memory-use fraction of the source")
    target_use = serializers.FloatField(help_text="memory-use fraction of the target")


class RebalanceSerializer(serializers.Serializer):  # type: ignore[type-arg]
    stance = serializers.ChoiceField(
        choices=["off", "paused", "balanced", "holding", "moving", "stuck"]
    )
    reason = serializers.CharField()
    spread = serializers.FloatField(help_text="most minus least used host (memory fraction)")
    moves = RebalanceMoveSerializer(many=True)


class PolicySerializer(serializers.Serializer):  # type: ignore[type-arg]
    failover = FailoverSerializer()
    rebalance = RebalanceSerializer(allow_null=True)
    tick = serializers.IntegerField(help_text="The engine's tick the answer was computed at.")
    computed_at = serializers.FloatField(help_text="When it was computed (Unix time).")
    age_s = serializers.FloatField(help_text="Seconds since it was computed.")
    ticks_behind = serializers.IntegerField(help_text="Ticks the engine made since.")
    stale = serializers.BooleanField(
        help_text="Behind the engine and older than a few seconds (nobody refreshed it)."
    )


def _root_password(help_text: str = "", *, required: bool = True) -> serializers.CharField:
    """A root password in a request: write-only, taken as typed, never echoed or stored."""
    return serializers.CharField(
        max_length=4096,
        trim_whitespace=False,
        write_only=True,
        style={"input_type": "password"},
        help_text=help_text,
        required=required,
        allow_blank=not required,
        default=empty if required else "",
    )


def _ssh_port() -> serializers.IntegerField:
    return serializers.IntegerField(required=False, default=22, min_value=1, max_value=65535)


class RemoveHostSerializer(serializers.Serializer):  # type: ignore[type-arg]
    password = _root_password(
        "The host's root password: its agent is then stopped and uninstalled over SSH (used "
        "once, never stored). Without it the agent stays, unable to log in.",
        required=False,
    )


class RepairHostSerializer(serializers.Serializer):  # type: ignore[type-arg]
    password = _root_password(
        "The host's root password, used once for the SSH bootstrap, never stored."
    )
    fingerprint = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=50,
        help_text="SSH host key fingerprint to pin (default: the one pinned before).",
    )
    port = _ssh_port()


class NewHostSerializer(serializers.Serializer):  # type: ignore[type-arg]
    name = serializers.CharField(max_length=253)
    address = serializers.CharField(max_length=253, required=False, allow_blank=True)
    port = _ssh_port()
    password = _root_password()
    fingerprint = serializers.CharField(
        max_length=50,
        help_text="The SSH host key fingerprint you checked (POST scan-host-key/ shows it).",
    )


class AddHostsSerializer(serializers.Serializer):  # type: ignore[type-arg]
    hosts = NewHostSerializer(many=True, allow_empty=False)
    member = serializers.CharField(
        max_length=253,
        required=False,
        allow_blank=True,
        default="",
        help_text="Shared storage: the existing host to read the corosync key from "
        "(default: the first by name).",
    )
    member_password = _root_password(
        "Shared storage: the root password of that existing host, used once to read the "
        "cluster's corosync key over SSH; neither is stored.",
        required=False,
    )


class ScanKeySerializer(serializers.Serializer):  # type: ignore[type-arg]
    address = serializers.CharField(max_length=253)
    port = _ssh_port()


class FingerprintSerializer(serializers.Serializer):  # type: ignore[type-arg]
    address = serializers.CharField()
    fingerprint = serializers.CharField()


def job_response(job: Job) -> Response:
    return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)
