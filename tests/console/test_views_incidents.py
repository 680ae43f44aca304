"""Failovers read back from the event log as incidents: what failed, when it was noticed, the
fence result, where each guest went and how long it took."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils import timezone

from console.events.models import Event
from console.events.services import record
from tests.console import factories as f
from tests.console.views_support import login, text


def at(event: Event, seconds: float, base: dt.datetime) -> None:
    Event.objects.filter(pk=event.pk).update(time=base + dt.timedelta(seconds=seconds))


def test_a_host_failure_reads_as_one_incident(db: None) -> None:
    cluster = f.ClusterFactory(name="et")
    fence_job = f.JobFactory(cluster=cluster, kind="fence", status="succeeded")
    base = timezone.now() - dt.timedelta(minutes=5)
    steps = [
        (
            0,
            "host-state",
            "host",
            "et-virt05",
            "online -> unreachable: missed heartbeats (limit 3s)",
            {},
        ),
        (
            0.1,
            "service-state",
            "service",
            "guest1",
            "started -> fence: may still run on silent et-virt05: waiting for a fence",
            {},
        ),
        (
            0.2,
            "fence",
            "action",
            "c1-a1",
            "fence et-virt05",
            {"job": fence_job.pk, "host": "et-virt05", "device": "ipmi5", "runner": "et-virt06"},
        ),
        (2.5, "host-state", "host", "et-virt05", "fencing -> fenced: fence_ipmilan said off", {}),
        (
            2.6,
            "start",
            "action",
            "c1-a2",
            "start guest1 on et-virt06",
            {"job": 99, "service": "guest1", "host": "et-virt06"},
        ),
        (
            3.1,
            "service-state",
            "service",
            "guest1",
            "recovering -> started: running on et-virt06",
            {},
        ),
    ]
    for seconds, verb, kind, name, message, data in steps:
        event = record(
            actor="engine",
            verb=verb,
            object_type=kind,
            object_name=name,
            cluster=cluster,
            result="info",
            message=message,
            data=data,
        )
        at(event, seconds, base)
    page = text(login("viewer").get("/events/incidents/"))
    assert "et-virt05 failed" in page
    assert "missed heartbeats (limit 3s)" in page
    assert "ipmi5 via et-virt06: succeeded" in page
    assert "guest1</td><td>et-virt06</td>" in page.replace("\n", "")
    assert "3.1 s" in page  # noticed -> running again, in tenths below 10 s
    filtered = text(login("viewer", "v2").get("/events/?host=et-virt05&kind=host-state"))
    assert filtered.count("et-virt05") >= 2 and "guest1" not in filtered


def test_no_incidents_is_said_plainly(db: None) -> None:
    assert "No incidents recorded." in text(login("viewer").get("/events/incidents/"))


def test_a_new_event_shows_at_the_next_view_and_none_is_read_again_without_one(
    db: None, monkeypatch: Any
) -> None:
    """Incidents are folded once per new engine event (kept per process)."""
    from console.events import incidents

    cluster = f.ClusterFactory(name="et")
    folds: list[int] = []
    real = incidents._fold
    monkeypatch.setattr(incidents, "_fold", lambda rows: folds.append(len(rows)) or real(rows))

    def state(old: str, new: str, reason: str) -> None:
        record(
            actor="engine",
            verb="service-state",
            object_type="service",
            object_name="g1",
            cluster=cluster,
            result="info",
            message=f"{old} -> {new}: {reason}",
            data={"kind": "service", "old": old, "new": new, "reason": reason},
        )

    state("started", "recovering", "crashed")
    client = login("viewer")
    assert "recovery open" in text(client.get("/events/incidents/"))
    assert "recovery open" in text(client.get("/events/incidents/"))
    assert folds == [1]  # the second view read no event again
    state("starting", "started", "running")
    page = text(client.get("/events/incidents/"))
    assert "g1 crashed" in page and "recovered in" in page and "recovery open" not in page
    assert folds == [1, 2]
