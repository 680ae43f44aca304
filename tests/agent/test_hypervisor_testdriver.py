"""Every hypervisor command and event path against libvirt's test:///default driver."""

from __future__ import annotations

import pytest

from agent.hypervisor import LibvirtHypervisor, lifecycle_state

from .conftest import EventLog, Harness, domain_xml, unique


@pytest.fixture
def guest(harness: Harness) -> str:
    name = unique("g")
    assert harness.run("define", xml=domain_xml(name)).ok
    return name


def test_define_reports_the_guest_and_sends_an_event(harness: Harness, events: EventLog) -> None:
    name = unique("g")
    result = harness.run("define", xml=domain_xml(name))
    assert result.ok, result.error
    assert result.data["name"] == name
    assert result.data["state"] == "shutoff"
    ev = events.wait_for(lambda e: e.guest == name)
    assert (ev.state, ev.detail) == ("defined", "added")


def test_start_then_start_again_is_idempotent(
    harness: Harness, guest: str, events: EventLog
) -> None:
    first = harness.run("start", guest=guest)
    assert first.ok and first.data["state"] == "running" and first.data["changed"] is True
    assert events.wait_for(lambda e: e.guest == guest and e.state == "started").detail == "booted"
    again = harness.run("start", guest=guest)
    assert again.ok and again.data["changed"] is False


def test_shutdown_stops_the_guest(harness: Harness, guest: str, events: EventLog) -> None:
    harness.run("start", guest=guest)
    result = harness.run("shutdown", guest=guest, timeout_s=5)
    assert result.ok, result.error
    assert result.data["state"] == "shutoff"
    assert result.data["how"] == "shutdown"
    events.wait_for(lambda e: e.guest == guest and e.state == "stopped")
    assert harness.run("shutdown", guest=guest).data["how"] == "already_off"


def test_destroy_and_its_event(harness: Harness, guest: str, events: EventLog) -> None:
    harness.run("start", guest=guest)
    result = harness.run("destroy", guest=guest)
    assert result.ok and result.data["state"] == "shutoff" and result.data["changed"]
    ev = events.wait_for(lambda e: e.guest == guest and e.state == "stopped")
    assert ev.detail == "destroyed"
    assert harness.run("destroy", guest=guest).data["changed"] is False


def test_undefine(harness: Harness, guest: str, events: EventLog) -> None:
    result = harness.run("undefine", guest=guest)
    assert result.ok and result.data["changed"] is True
    events.wait_for(lambda e: e.guest == guest and e.state == "undefined")
    assert harness.run("undefine", guest=guest).data["changed"] is False
    missing = harness.run("start", guest=guest)
    assert not missing.ok and missing.error and missing.error.code == "not_found"


def test_migrate_returns_libvirts_own_error(harness: Harness, guest: str) -> None:
    harness.run("start", guest=guest)
    result = harness.run("migrate", guest=guest, dest_uri="test:///default")
    assert not result.ok
    assert result.error is not None
    assert result.error.code == "libvirt_error"
    assert "migration is not supported" in result.error.message
    assert harness.run("list_guests").data["guests"]  # the agent is fine afterwards


def test_migrate_to_a_dead_host_fails_fast(harness: Harness, guest: str) -> None:
    harness.run("start", guest=guest)
    result = harness.run("migrate", guest=guest, dest_uri="qemu+tcp://127.0.0.1:1/system")
    assert result.error is not None and result.error.code == "destination_unreachable"
    assert result.duration_s < 2


def test_list_guests_with_state(harness: Harness, guest: str) -> None:
    harness.run("start", guest=guest)
    listed = {g["name"]: g for g in harness.run("list_guests").data["guests"]}
    assert listed[guest]["state"] == "running"
    assert len(listed[guest]["uuid"]) == 36
    active = harness.run("list_guests", active_only=True).data["guests"]
    assert all(g["state"] == "running" for g in active)


def test_host_facts(harness: Harness) -> None:
    facts = harness.run("host_facts").data
    assert facts["cpus"] > 0
    assert facts["memory_total_mib"] > 0
    assert facts["libvirt_version"].count(".") == 2
    assert facts["hypervisor"] == "TEST"
    assert "host_uuid" in facts  # the test driver's capabilities carry none


def test_crash_event_mapping() -> None:
    import libvirt

    stopped = libvirt.VIR_DOMAIN_EVENT_STOPPED
    assert lifecycle_state(stopped, libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED) == (
        "crashed",
        "failed",
    )
    assert lifecycle_state(stopped, libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED) == (
        "crashed",
        "crashed",
    )
    assert lifecycle_state(stopped, libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED) == (
        "migrated",
        "migrated",
    )
    assert lifecycle_state(libvirt.VIR_DOMAIN_EVENT_CRASHED, 0) == ("panicked", "panicked")
    assert lifecycle_state(99, 0)[0] == "unknown"


def test_unreachable_libvirt_is_retried_with_backoff(events: EventLog) -> None:
    hv = LibvirtHypervisor("qemu+tcp://127.0.0.1:1/system", events, backoff_max_s=1)
    assert not hv.connected()  # first attempt fails fast, no crash
    assert not hv.connected()  # within backoff: not even tried
    facts_error = None
    try:
        hv.host_facts()
    except Exception as exc:
        facts_error = exc
    assert getattr(facts_error, "code", None) == "libvirt_unavailable"


def test_dumpxml_returns_the_persistent_definition(harness: Harness, guest: str) -> None:
    result = harness.run("dumpxml", guest=guest)
    assert result.ok, result.error
    assert result.data["name"] == guest
    assert f"<name>{guest}</name>" in result.data["xml"]
    assert result.data["state"] == "shutoff"
    harness.run("start", guest=guest)
    assert harness.run("dumpxml", guest=guest).data["state"] == "running"
    missing = harness.run("dumpxml", guest="no-such-guest")
    assert not missing.ok and missing.error is not None
    assert missing.error.code == "not_found"
    bad = harness.run("dumpxml", guest="a;b")
    assert not bad.ok and bad.error is not None and bad.error.code == "invalid_name"


def _with_uuid(name: str, uuid: str) -> str:
    return domain_xml(name).replace("</name>", f"</name><uuid>{uuid}</uuid>")


def test_a_leftover_definition_of_the_name_gives_way_unless_it_runs(
    harness: Harness, test_hv: LibvirtHypervisor
) -> None:
    # left on a host that was down when its guest failed over, and the service then made anew
    name = unique("g")
    old, new = "6b1f3c2e-0000-4000-8000-000000000001", "6b1f3c2e-0000-4000-8000-000000000002"
    assert harness.run("define", xml=_with_uuid(name, old)).ok
    again = harness.run("define", xml=_with_uuid(name, new))
    assert again.ok, again.error
    assert again.data["uuid"] == new
    # the same guest's own definition is redefined in place, as before
    assert harness.run("define", xml=_with_uuid(name, new)).data["uuid"] == new
    # one that runs is another guest of that name here: refused, and left running
    assert harness.run("start", guest=name).ok
    refused = harness.run("define", xml=_with_uuid(name, old))
    assert not refused.ok and "already exists" in str(refused.error), refused
    listed = {g.name: g for g in test_hv.list_guests()}
    assert listed[name].uuid == new and listed[name].state == "running"
