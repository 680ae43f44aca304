"""API actions for operations: each answers 202 with the job that carries it out."""

from __future__ import annotations

from rest_framework import serializers, status
from rest_framework.response import Response

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


def job_response(job: Job) -> Response:
    return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)
