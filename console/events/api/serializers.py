from rest_framework import serializers

from console.events.models import Event


class EventSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    class Meta:
        model = Event
        fields = [
            "id",
            "time",
            "actor",
            "verb",
            "object_type",
            "object_name",
            "cluster",
            "result",
            "severity",
            "message",
            "data",
        ]
