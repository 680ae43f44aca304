"""The console's state choices and the engine's enums cover each other: one vocabulary, and
each status carries its colour (and, for a guest, whether it occupies its host) in one place."""

from __future__ import annotations

import re
from pathlib import Path

from console import engine
from console.clusters.choices import HostState
from console.core import choices
from console.core.templatetags.haven import STATE_LABELS
from console.engine import states
from console.engine.tick import OCCUPYING
from console.events.models import EventResult, Severity
from console.jobs.models import JobStatus, StepStatus
from console.services.choices import OCCUPYING_STATES, DesiredState, Recovery, ServiceState

ROOT = Path(__file__).resolve().parents[2]


def test_service_states_are_the_engines_plus_unknown() -> None:
    assert set(ServiceState.values) == {s.value for s in engine.ServiceState} | {"unknown"}
    assert all(type(v) is str for v in ServiceState.values)  # plain text in the database


def test_host_states_are_the_engines_plus_new() -> None:
    assert set(HostState.values) == {s.value for s in engine.HostState} | {"new"}


def test_wishes_and_recovery_policies_are_the_engines() -> None:
    assert set(DesiredState.values) == {d.value for d in states.Desired}
    assert set(Recovery.values) == {r.value for r in states.Recovery}


def test_occupying_is_the_engines_set() -> None:
    assert {s.value for s in OCCUPYING} == OCCUPYING_STATES == ServiceState.occupying()
    assert all(ServiceState(s.value).occupies for s in OCCUPYING)
    assert not ServiceState.UNKNOWN.occupies and not HostState.ONLINE.occupies


def test_every_status_has_a_colour_the_style_sheet_draws() -> None:
    css = (ROOT / "static" / "haven.css").read_text()
    drawn = set(re.findall(r"\.badge\.([a-z]+)", css))
    sets = choices.kinds()
    assert set(sets) == {"host", "service", "job", "step", "event", "severity"}
    assert sets["job"] is JobStatus and sets["step"] is StepStatus
    assert sets["event"] is EventResult and sets["severity"] is Severity
    for status_set in sets.values():
        for member in status_set:
            assert set(member.colour.split()) <= drawn, (status_set, member)
    assert ServiceState.STARTED.colour == "green" and ServiceState.FAILED.colour == "red"
    assert HostState.MAINTENANCE.colour == "blue" and Severity.CRITICAL.colour == "red strong"
    assert HostState.colour_of("no-such-state") == "grey"


def test_state_labels_name_real_states() -> None:
    assert set(STATE_LABELS) <= set(ServiceState.values) | set(HostState.values)
