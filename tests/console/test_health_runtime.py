"""Hung guests and preemption that saves, through the console runtime on a real Redis:
the agents' health events and heartbeats in, the engine's destroy and restart out, the
event log's labels; the services' health fields reach the agents in the domain XML."""

from __future__ import annotations

from typing import Any

import pytest

from agent.protocol import HealthSpec
from console import engine
from console.events.models import Event
from console.ha import actions, ingest, runner
from console.ha.snapshot import action_result
from console.ha.store import Store
from console.jobs.models import Job, JobStatus
from console.services.models import VmService
from tests.console import factories as f
from tests.console.test_runtime import placement, run


def _health_event(into: Store, host: str, guest: str, check: str, detail: str, t: float) -> Any:
    return ingest.handle(
        {
            "v": 2,
            "kind": "event",
            "event": "health",
            "host": host,
            "guest": guest,
            "uuid": "",
            "state": check,
            "detail": detail,
            "ts": t,
        },
        into,
        received=t,
        sender=host,
    )


@pytest.mark.django_db(transaction=True)
def test_a_failing_probe_destroys_and_restarts_the_guest_in_place(
    cluster3: Any,
    store: Store,
) -> None:
    cluster, agents = cluster3
    transport = agents  # the fleet is the transport: what was sent
    VmService.objects.filter(name="guest2").update(
        probe="http", probe_host="10.88.0.6", probe_port=8080, probe_path="/health"
    )
    t = run(cluster, agents, store, 1000.0, 1005.0)
    define = next(
        c for h, c in transport.sent if c["kind"] == "define" and "guest2" in c["args"]["xml"]
    )
    spec = HealthSpec.from_domain_xml(define["args"]["xml"])
    assert spec is not None and (spec.probe, spec.probe_port, spec.probe_path) == (
        "http",
        8080,
        "/health",
    )
    # the application dies; QEMU (and the guest) keep running
    woke = _health_event(
        store, "et-virt06", "guest2", "probe", "http 10.88.0.6:8080/health: refused (3/3)", t
    )
    assert woke == cluster.pk  # the runner is woken at once
    sent = len(transport.sent)
    runner.tick_once(cluster.pk, store, now=t + 0.05)
    new = [(h, c["kind"], c["args"].get("guest")) for h, c in transport.sent[sent:]]
    assert new == [("et-virt06", "destroy", "guest2")]  # restart in place: destroy first
    service = VmService.objects.get(name="guest2")
    assert service.state_reason.startswith("application probe failing (http 10.88.0.6:8080")
    agents.answer(t + 0.1)  # the destroy's result wakes the runner too (the crash budget)
    assert Job.objects.get(kind="stop", params__reason="hung").status == JobStatus.SUCCEEDED
    sent = len(transport.sent)
    runner.tick_once(cluster.pk, store, now=t + 0.15)
    new = [(h, c["kind"]) for h, c in transport.sent[sent:]]
    assert new == [("et-virt06", "define")]  # then start, in the next stage
    run(cluster, agents, store, t + 1, t + 4)
    assert placement()["guest2"] == ("started", "et-virt06")
    causes = [
        e.data.get("cause")
        for e in Event.objects.filter(object_name="guest2", verb="service-state")
    ]
    assert causes.count("probe") == 2  # started -> stopping, stopping -> recovering
    # the restarted guest is healthy: its report no longer says otherwise
    report = store.reports(["et-virt06"])["et-virt06"]
    assert report.unhealthy == {}


@pytest.mark.django_db(transaction=True)
def test_a_heartbeat_carries_the_failure_when_the_event_was_lost(
    cluster3: Any,
    store: Store,
) -> None:
    cluster, agents = cluster3
    transport = agents  # the fleet is the transport: what was sent
    t = run(cluster, agents, store, 1000.0, 1005.0)
    beat = {
        "v": 2,
        "kind": "heartbeat",
        "host": "et-virt05",
        "ts": t,
        "memory_total_mib": 16384,
        "memory_free_mib": 15000,
        "cpus": 8,
        "host_uuid": "uuid-et-virt05",
        "agent_version": "t",
        "guests": [{"name": "guest1", "uuid": "", "state": "running"}],
        "unhealthy": {"guest1": {"check": "watchdog", "detail": "watchdog action none"}},
    }
    ingest.handle(beat, store, received=t, sender="et-virt05")
    sent = len(transport.sent)
    runner.tick_once(cluster.pk, store, now=t)
    new = [(h, c["kind"], c["args"].get("guest")) for h, c in transport.sent[sent:]]
    assert new == [("et-virt05", "destroy", "guest1")]
    assert VmService.objects.get(name="guest1").state_reason.startswith("watchdog fired")


@pytest.mark.django_db
def test_preempt_stop_saves_and_the_result_says_so() -> None:
    cluster = f.ClusterFactory()
    host = f.HostFactory(cluster=cluster, name="h1")
    service = f.VmServiceFactory(cluster=cluster, name="lab")
    stop = engine.Stop("c1-9", "lab", "h1", engine.StopReason.PREEMPT, save=True)
    kind, steps, params = actions.steps_for(
        stop, cluster=cluster, hosts={"h1": host}, services={"lab": service}, online={"h1"}
    )
    assert kind == "stop" and steps[0].kind == "shutdown" and steps[0].args["save"] is True
    job = Job.objects.create(
        kind=kind, cluster=cluster, params=params, action_id="c1-9", status=JobStatus.SUCCEEDED
    )
    job.steps.create(seq=0, kind="shutdown", command_id="x1", result={"how": "saved"})
    assert action_result(job).saved
    job.steps.update(result={"how": "shutdown", "save_error": "no space left"})
    result = action_result(job)
    assert not result.saved and "managed save failed (no space left)" in result.message
    start = engine.Start("c1-10", "lab", "h1", resume=True)
    _, steps, _ = actions.steps_for(
        start, cluster=cluster, hosts={"h1": host}, services={"lab": service}, online={"h1"}
    )
    assert [s.kind for s in steps] == ["define", "start"] and steps[1].args["resume"] is True


@pytest.mark.django_db
def test_health_fields_shape_the_defined_xml_and_saveability() -> None:
    service = f.VmServiceFactory(name="web", health_watchdog=True, health_panic=True)
    xml = service.defined_xml()
    assert '<watchdog model="i6300esb" action="none"' in xml and '<panic model="isa"' in xml
    spec = HealthSpec.from_domain_xml(xml)
    assert spec is not None and spec.watchdog and spec.panic
    assert service.save_refusal() == ""
    service.domain_xml = service.domain_xml.replace(
        "</domain>", "<devices><hostdev mode='subsystem' type='pci'/></devices></domain>"
    )
    assert "host device" in service.save_refusal()
    plain = f.VmServiceFactory(name="plain")
    assert plain.defined_xml() == plain.domain_xml  # no checks: the person's XML as it is


@pytest.mark.django_db
def test_the_service_form_takes_the_health_fields_with_the_same_rules() -> None:
    from console.services.forms import VmServiceForm

    cluster = f.ClusterFactory()
    base = {"domain_xml": f.domain_xml("web"), "recovery": "restart", "max_restarts": 0}
    base |= {"restart_window_s": 0, "max_relocations": 1, "priority": 0}
    bad = VmServiceForm(
        {**base, "probe": "http", "probe_host": "a;b", "probe_port": 80}, cluster=cluster
    )
    assert not bad.is_valid() and "probe_host" in bad.errors
    good = VmServiceForm(
        {**base, "probe": "http", "probe_host": "10.0.0.5", "probe_port": 80, "health_panic": "on"},
        cluster=cluster,
    )
    assert good.is_valid(), good.errors
    service = good.save()
    assert service.health_panic and service.probe_misses == 3 and service.probe_path == "/"
