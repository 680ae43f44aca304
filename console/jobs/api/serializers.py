from rest_framework import serializers

from console.jobs.models import Job, JobEvent


class JobEventSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    class Meta:
        model = JobEvent
        fields = ["id", "job", "seq", "time", "host", "step", "level", "message", "data"]


class JobSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    class Meta:
        model = Job
        fields = [
            "id",
            "kind",
            "cluster",
            "hosts",
            "status",
            "progress",
            "explanation",
            "params",
            "created_by",
            "created",
            "started",
            "finished",
        ]
