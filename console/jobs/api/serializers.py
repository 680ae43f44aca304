from rest_framework import serializers

from console.jobs.models import Job, JobEvent, JobStep


class JobEventSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    class Meta:
        model = JobEvent
        fields = ["id", "job", "seq", "time", "host", "step", "level", "message", "data"]


class JobStepSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    host_name = serializers.CharField(source="host.name", read_only=True, default="")

    class Meta:
        model = JobStep
        fields = [
            "seq",
            "stage",
            "host",
            "host_name",
            "kind",
            "command_id",
            "args",
            "status",
            "result",
            "error",
            "dispatched",
            "finished",
        ]


class JobSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    steps = JobStepSerializer(many=True, read_only=True)

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
            "action_id",
            "steps",
        ]
