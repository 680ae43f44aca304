"""Failovers read back from the event log as incidents: what failed, when it was noticed, the
fence result, where each guest went and how long it took."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
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


def _made_room(page: str) -> list[str]:
    """The "stopped to make room" rows of the incidents page, as text."""
    rows = re.findall(r'<tr class="made-room"[^>]*>(.*?)</tr>', page, re.S)
    return [" ".join(re.sub(r"<[^>]+>", " ", r).split()) for r in rows]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("scenario", "how", "back"),
    [
        ("preempt-saves-then-resumes", "saved at", "resumed on n1 at"),
        ("preempt-unsaveable-shuts-down", "shut down at", "booted afresh on n1 at"),
    ],
)
def test_the_host_incident_shows_who_was_stopped_for_whom(
    scenario: str, how: str, back: str
) -> None:
    """A real preemption through the runtime (n2 dies; prod, priority 10, takes lab's room on
    n1): the incident of n2 lists lab, stopped on n1 for prod, saved (or shut down, saying
    why) and when it ran again."""
    from console.engine.sim import load
    from console.events.incidents import incidents
    from tests.console.runtime_world import simulate_runtime

    sc = load(Path(__file__).resolve().parents[1] / "engine" / "scenarios" / f"{scenario}.json")
    simulate_runtime(sc)
    found = incidents(Event.objects.all())
    host = [i for i in found if i.kind == "host" and i.subject == "n2"]
    assert len(host) == 1 and [g.name for g in host[0].guests] == ["prod"]
    [room] = host[0].made_room
    assert (room.name, room.host, room.for_guest) == ("lab", "n1", "prod")
    assert (room.priority, room.own_priority, room.back_on) == (10, 0, "n1")
    assert room.done is not None and room.back is not None
    assert room.stopped <= room.done <= room.back and room.resumed is (how == "saved at")
    assert all(not i.made_room for i in found if i is not host[0])  # listed once
    rows = _made_room(text(login("viewer").get("/events/incidents/")))
    assert len(rows) == 1, rows
    assert rows[0].startswith("lab n1 prod (priority 10 > 0)") and how in rows[0], rows
    assert back in rows[0], rows
    if how == "shut down at":
        assert room.why == "not saved: saving is turned off for it" and room.why in rows[0]
    else:
        assert room.why == "" and room.save


def test_a_guest_incident_lists_the_guest_shut_down_to_make_room_for_its_restart(
    db: None,
) -> None:
    """prod crashes and relocates to n2, where lab is shut down for it (saving refused): the
    guest incident of prod lists lab with the refusal; lab not back yet."""
    from console.events.incidents import incidents

    cluster = f.ClusterFactory(name="gi")

    def state(name: str, old: str, new: str, **data: Any) -> None:
        record(
            actor="engine",
            verb="service-state",
            object_type="service",
            object_name=name,
            cluster=cluster,
            result="info",
            message=f"{old} -> {new}: (prose the incidents never read)",
            data={"kind": "service", "old": old, "new": new, "reason": "", **data},
        )

    state("prod", "started", "recovering", host="n1")
    room = {"host": "n2", "for": "prod", "priority": 5, "own_priority": 1, "save": False}
    state("lab", "started", "stopping", host="n2", room={**room, "saved": None})
    state("prod", "recovering", "waiting", host=None)
    why = "not saved: its disk is a host device"
    shut = {"host": "n2", "for": "", "saved": False, "not_saved": why}
    state("lab", "stopping", "waiting", host=None, room=shut)
    state("prod", "waiting", "starting", host="n2")
    state("prod", "starting", "started", host="n2")
    [incident] = incidents(Event.objects.all())
    assert incident.kind == "guest" and incident.subject == "prod" and incident.ended
    [row] = incident.made_room
    assert (row.name, row.host, row.for_guest, row.how, row.why) == (
        "lab",
        "n2",
        "prod",
        "shut down",
        why,
    )
    assert row.back is None and not row.resumed
    rows = _made_room(text(login("viewer").get("/events/incidents/")))
    assert rows == [rows[0]] and rows[0].startswith("lab n2 prod (priority 5 > 1)")
    assert "shut down at" in rows[0] and why in rows[0] and rows[0].endswith("not yet")


def test_after_a_new_event_only_the_events_since_are_read_and_the_fold_is_the_same(
    db: None, monkeypatch: Any
) -> None:
    """At 20,000 events in the window, reading them all again at each new event was 80 % of
    the incidents page: only those since the kept ones are read (and a tail before them),
    and the incidents are those a fold of the whole window gives."""
    from console.events import incidents

    cluster = f.ClusterFactory(name="inc")
    monkeypatch.setattr(incidents, "TAIL", 3)
    read: list[int] = []
    real_rows = incidents._rows
    monkeypatch.setattr(
        incidents,
        "_rows",
        lambda qs, n: read.append(n) or real_rows(qs, n),  # type: ignore[func-returns-value]
    )

    def crash(guest: str, old: str, new: str, reason: str) -> None:
        record(
            actor="engine", verb="service-state", object_type="service", object_name=guest,
            cluster=cluster, result="info", message=f"{old} -> {new}: {reason}",
            data={"kind": "service", "old": old, "new": new, "reason": reason},
        )  # fmt: skip

    for i in range(6):
        crash(f"g{i}", "started", "recovering", "crashed")
        crash(f"g{i}", "starting", "started", "running")
    events = Event.objects.all()
    first = incidents.incidents(events, window=10)
    assert read == [10]  # the whole window, the first time
    crash("g9", "started", "recovering", "crashed")
    crash("g3", "started", "recovering", "crashed")
    again = incidents.incidents(events, window=10)
    assert read == [10, 10 + 3]  # the rows since, with a tail of 3 behind the newest kept
    incidents._kept.clear()
    whole = incidents.incidents(events, window=10)
    assert read[-1] == 10
    assert [(i.subject, i.noticed, i.ended) for i in again] == [
        (i.subject, i.noticed, i.ended) for i in whole
    ]
    assert {i.subject for i in again} - {i.subject for i in first} == {"g9"}
    assert [i.subject for i in again if i.ended is None] == ["g3", "g9"]
