"""Hung guests (health checks) and preemption that saves: the engine's side, tick by tick."""

from __future__ import annotations

from dataclasses import replace

from console.engine import (
    ActionResult,
    HealthCheck,
    HealthFailure,
    MadeRoom,
    ServiceConfig,
    ServiceState,
    Start,
    Status,
    Stop,
    StopReason,
)
from tests.engine.test_engine_tick import Cluster, ok

S = ServiceState


def _step_unhealthy(c: Cluster, host: str, failures: dict[str, HealthFailure]) -> object:
    """One tick in which `host` reports `failures` (its guests still listed as running)."""
    c.flags[host] = {**c.flags.get(host, {}), "unhealthy": failures}
    try:
        return c.step()
    finally:
        c.flags[host] = {k: v for k, v in c.flags[host].items() if k != "unhealthy"}


def test_hung_guest_is_destroyed_then_restarted_in_place_with_its_label() -> None:
    c = Cluster()
    c.add("g", "n1")
    c.step()
    c.step()
    d = _step_unhealthy(c, "n1", {"g": HealthFailure(HealthCheck.WATCHDOG, "action none")})
    (stop,) = d.actions  # type: ignore[attr-defined]
    assert isinstance(stop, Stop) and stop.reason is StopReason.HUNG and stop.force
    assert stop.host == "n1"
    s = c.status.services["g"]
    assert s.state is S.STOPPING
    assert s.reason.startswith("watchdog fired (action none) on n1")
    (tr,) = d.transitions  # type: ignore[attr-defined]
    assert tr.cause == "watchdog"
    # a report still listing it unhealthy while the destroy is in flight changes nothing
    d = _step_unhealthy(c, "n1", {"g": HealthFailure(HealthCheck.WATCHDOG, "action none")})
    assert d.actions == ()  # type: ignore[attr-defined]
    c.running["n1"].discard("g")
    d = c.step(results=ok(stop))
    (start,) = d.actions
    assert isinstance(start, Start) and start.host == "n1" and not start.resume
    rec = [t for t in d.transitions if t.new is S.RECOVERING]
    assert rec and rec[0].cause == "watchdog" and "restart 1/unlimited on n1" in rec[0].reason


def test_failed_destroy_of_a_hung_guest_is_retried() -> None:
    c = Cluster()
    c.add("g", "n1")
    c.step()
    c.step()
    fail = {"g": HealthFailure(HealthCheck.PROBE, "tcp 10.0.0.5:80: refused (3/3)")}
    d = _step_unhealthy(c, "n1", fail)
    (stop,) = d.actions  # type: ignore[attr-defined]
    d = c.step(results=(ActionResult(stop.id, False, "libvirt said no"),))
    s = c.status.services["g"]
    assert s.state is S.STARTED and "destroying it failed (libvirt said no)" in s.reason
    assert not s.hung
    d = _step_unhealthy(c, "n1", fail)
    assert d.actions == ()  # type: ignore[attr-defined]  # not before retry_s
    c.now += c.status.services["g"].retry_at - c.now
    d = _step_unhealthy(c, "n1", fail)
    assert [type(a) for a in d.actions] == [Stop]  # type: ignore[attr-defined]


def test_a_panic_that_destroyed_the_guest_is_a_crash_with_the_panic_label() -> None:
    c = Cluster()
    c.add("g", "n1")
    c.step()
    c.step()
    c.running["n1"].discard("g")
    d = _step_unhealthy(c, "n1", {"g": HealthFailure(HealthCheck.PANIC, "panicked")})
    (start,) = d.actions  # type: ignore[attr-defined]
    assert isinstance(start, Start) and start.host == "n1"
    (rec,) = [t for t in d.transitions if t.new is S.RECOVERING]  # type: ignore[attr-defined]
    assert rec.cause == "panic" and rec.reason.startswith("guest panicked (panicked) on n1")


def test_preempted_saveable_guest_is_saved_and_resumed_where_it_was() -> None:
    c = Cluster(hosts={"n1": 2048})
    c.add("lab", "n1", memory_mb=1024, saveable=True)
    c.step()
    c.services["prod"] = ServiceConfig(name="prod", memory_mb=1536, priority=10)
    d = c.step()
    (stop,) = d.actions
    assert isinstance(stop, Stop) and stop.reason is StopReason.PREEMPT and stop.save
    assert "saving it to make room for prod" in c.status.services["lab"].reason
    (asked,) = [t for t in d.transitions if t.name == "lab"]
    assert asked.room == MadeRoom("n1", "prod", 10, 0, save=True)  # typed for the incidents
    c.running["n1"].discard("lab")
    d = c.step(results=(ActionResult(stop.id, True, saved=True),))
    lab = c.status.services["lab"]
    assert lab.state is S.WAITING and lab.saved_on == "n1"
    (tr,) = [t for t in d.transitions if t.name == "lab"]
    assert tr.cause == "saved" and tr.reason.startswith("saved on n1 to make room for prod")
    assert tr.room == MadeRoom("n1", saved=True)
    assert lab.reason.startswith("saved on n1: resumes there when room returns")
    (start,) = d.actions
    assert isinstance(start, Start) and start.service == "prod"
    c.running.setdefault("n1", set()).add("prod")
    c.step(results=ok(start))
    # room returns: prod goes away; lab resumes its saved state on n1
    del c.services["prod"]
    c.running["n1"].discard("prod")
    d = c.step()
    (resume,) = d.actions
    assert isinstance(resume, Start) and resume.host == "n1" and resume.resume
    (back,) = [t for t in d.transitions if t.name == "lab"]
    assert back.new is S.STARTING and back.cause == "resume"
    assert c.status.services["lab"].saved_on is None
    assert Status.from_json(c.status.to_json()) == replace(c.status, active=c.status.active)


def test_a_saved_guest_started_elsewhere_boots_afresh_and_drops_the_save() -> None:
    c = Cluster(hosts={"n1": 2048, "n2": 2048})
    c.add("lab", "n1", memory_mb=1024, saveable=True)
    c.step()
    c.status = replace(
        c.status,
        services={
            "lab": replace(c.status.services["lab"], state=S.WAITING, node=None, saved_on="n1")
        },
        active=None,
    )
    c.running["n1"].discard("lab")
    c.hosts.pop("n1")  # n1 is gone from the configuration: only n2 is left
    d = c.step()
    (start,) = d.actions
    assert isinstance(start, Start) and start.host == "n2" and not start.resume
    assert [t.cause for t in d.transitions if t.name == "lab"] == [""]  # a fresh boot
    assert "its state saved on n1 is dropped" in c.status.services["lab"].reason


def test_a_shutdown_fallback_is_a_plain_preemption_with_the_reason() -> None:
    c = Cluster(hosts={"n1": 2048})
    c.add("lab", "n1", memory_mb=1024, saveable=True)
    c.step()
    c.services["prod"] = ServiceConfig(name="prod", memory_mb=1536, priority=10)
    (stop,) = c.step().actions
    c.running["n1"].discard("lab")
    why = "managed save failed (no space): shut down instead"
    d = c.step(results=(ActionResult(stop.id, True, why),))
    assert c.status.services["lab"].saved_on is None
    (tr,) = [t for t in d.transitions if t.name == "lab"]
    assert tr.reason == f"stopped on n1 to make room ({why})" and tr.cause == ""
    assert tr.room == MadeRoom("n1", saved=False, not_saved=why)
