"""The console's state choices and the engine's enums cover each other: one vocabulary."""

from __future__ import annotations

from console import engine
from console.clusters.choices import HOST_STATE_COLOURS, HostState
from console.core.templatetags.haven import STATE_LABELS
from console.services.choices import OCCUPYING_STATES, SERVICE_STATE_COLOURS, ServiceState


def test_service_states_are_the_engines_plus_unknown() -> None:
    assert set(ServiceState.values) == {s.value for s in engine.ServiceState} | {"unknown"}
    assert set(SERVICE_STATE_COLOURS) == set(ServiceState.values)


def test_host_states_are_the_engines_plus_new() -> None:
    assert set(HostState.values) == {s.value for s in engine.HostState} | {"new"}
    assert set(HOST_STATE_COLOURS) == set(HostState.values)


def test_occupying_is_the_engines_set() -> None:
    from console.engine.tick import OCCUPYING

    assert {s.value for s in OCCUPYING} == OCCUPYING_STATES
    assert set(ServiceState.values) >= OCCUPYING_STATES


def test_state_labels_name_real_states() -> None:
    assert set(STATE_LABELS) <= set(ServiceState.values) | set(HostState.values)
