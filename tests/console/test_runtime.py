"""The runtime on a real Redis: heartbeats in, the engine deciding, jobs out, results back.

Agents are simulated (console/ha/fakes.py ``FakeAgents``: the job transport, and messages
fed to ``ingest`` as the drainer does), so time is explicit and every step can be checked; real
agent processes are in test_live.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from agent.protocol import Command
from agent.sealing import open_sealed
from console.clusters.models import Host
from console.ha import credentials, ingest, rules, runner, snapshot
from console.ha.fakes import FakeAgents
from console.ha.store import Store
from console.jobs.models import Job, JobStatus
from console.services.models import VmService
from tests.console import factories as f


def run(cluster: Any, agents: FakeAgents, store: Store, start: float, until: float) -> float:
    t = start
    while t <= until:
        agents.heartbeat(t)
        runner.tick_once(cluster.pk, store, now=t)
        agents.answer(t)
        t += 1.0
    return t


def placement() -> dict[str, tuple[str, str | None]]:
    return {
        s.name: (s.state, s.host.name if s.host else None)
        for s in VmService.objects.select_related("host")
    }


@pytest.mark.django_db(transaction=True)
def test_services_start_on_their_preferred_hosts(cluster3: Any, store: Store) -> None:
    cluster, agents = cluster3
    run(cluster, agents, store, 1000.0, 1005.0)
    assert placement() == {
        "guest1": ("started", "et-virt05"),
        "guest2": ("started", "et-virt06"),
        "guest3": ("started", "et-virt07"),
    }
    kinds = [(h, c["kind"]) for h, c in agents.commands]
    assert ("et-virt05", "define") in kinds and ("et-virt05", "start") in kinds
    define = next(c for h, c in agents.commands if c["kind"] == "define")
    assert "<name>guest" in define["args"]["xml"]  # the console's own copy of the XML
    assert all(j.status == JobStatus.SUCCEEDED for j in Job.objects.all())


@pytest.mark.django_db(transaction=True)
def test_crash_event_restarts_in_place_at_once(cluster3: Any, store: Store) -> None:
    cluster, agents = cluster3
    t = run(cluster, agents, store, 1000.0, 1005.0)
    cluster_id = agents.crash("et-virt06", "guest2", t)  # QEMU killed: its agent says so
    assert cluster_id == cluster.pk  # the runner is woken by the event, not the next beat
    sent_before = len(agents.commands)
    runner.tick_once(cluster.pk, store, now=t + 0.05)
    new = [(h, c["kind"], c["args"].get("guest")) for h, c in agents.commands[sent_before:]]
    assert new == [("et-virt06", "define", None)]
    agents.answer(t + 0.1)
    run(cluster, agents, store, t + 1, t + 3)
    assert placement()["guest2"] == ("started", "et-virt06")


@pytest.mark.django_db(transaction=True)
def test_dead_host_is_fenced_before_its_guest_starts_elsewhere(cluster3: Any, store: Store) -> None:
    cluster, agents = cluster3
    t = run(cluster, agents, store, 1000.0, 1005.0)
    agents.power_off("et-virt05")  # power loss: silent, guests gone
    run(cluster, agents, store, t, t + 10)
    assert agents.fenced == ["et-virt05"]
    kinds = [(h, c["kind"], c["args"].get("guest")) for h, c in agents.commands]
    fence_at = next(i for i, k in enumerate(kinds) if k[1] == "fence")
    fence_host, fence_cmd = agents.commands[fence_at]
    assert fence_host in ("et-virt06", "et-virt07")  # a healthy host runs the fence agent
    assert "password" not in fence_cmd["args"]["params"]  # sealed for the fencing host alone
    opened = open_sealed(credentials.seal_key(fence_host), fence_host, Command.from_dict(fence_cmd))
    assert opened.args["params"]["password"] == "bmc-secret"
    starts = [i for i, k in enumerate(kinds) if k[1] == "start" and k[2] == "guest1"]
    assert starts[-1] > fence_at
    state, host = placement()["guest1"]
    assert state == "started" and host in ("et-virt06", "et-virt07")
    fence_job = Job.objects.get(kind="fence")
    assert fence_job.status == JobStatus.SUCCEEDED
    assert "bmc-secret" not in str(fence_job.steps.get().args)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("clustered_vg", [True, False])
def test_a_host_in_the_shared_storage_is_fenced_without_guests(
    cluster3: Any, store: Store, clustered_vg: bool
) -> None:
    """With a clustered VG every host of the cluster stack is in its dlm lockspace: a silent
    one blocks the others' GFS2 until it is fenced, guests or not; then the survivors' dlm is
    told. Without one, a host with no guests just goes offline."""
    from console.storage.models import VolumeGroup

    cluster, agents = cluster3
    VmService.objects.all().delete()
    if clustered_vg:
        VolumeGroup.objects.create(cluster=cluster, name="vg_shared", clustered=True)
        agents.corosync = set(agents.alive)  # their heartbeats report corosync
    t = run(cluster, agents, store, 1000.0, 1005.0)
    agents.alive.discard("et-virt05")
    run(cluster, agents, store, t, t + 10)
    acks = Job.objects.filter(kind="dlm-fence-ack")
    if clustered_vg:
        assert agents.fenced == ["et-virt05"]
        ack = acks.get()
        assert sorted(s.host.name for s in ack.steps.all()) == ["et-virt06", "et-virt07"]
        assert all(s.args == {"node": "et-virt05"} for s in ack.steps.all())
    else:
        assert agents.fenced == [] and not acks.exists()
        assert Host.objects.get(name="et-virt05").state == "offline"


@pytest.mark.django_db(transaction=True)
def test_a_lost_fence_result_is_followed_by_a_status_query(cluster3: Any, store: Store) -> None:
    cluster, agents = cluster3
    t = run(cluster, agents, store, 1000.0, 1005.0)
    agents.power_off("et-virt05")  # power loss
    agents.lose_next.add("fence")  # the fence happens, its result never arrives
    run(cluster, agents, store, t, t + 40)
    assert agents.fenced == ["et-virt05"]  # fenced once: the query, not a second fence, settled it
    [(runner, args)] = agents.queries
    assert runner != "et-virt05" and args["require_power"] == "off"
    assert "password" not in args["params"]  # sealed for the querying host, as for a fence
    state, host = placement()["guest1"]
    assert state == "started" and host in ("et-virt06", "et-virt07")
    query = Job.objects.filter(kind="fence", params__query="status").get()
    assert query.status == JobStatus.SUCCEEDED


@pytest.mark.django_db(transaction=True)
def test_a_host_whose_first_fence_device_fails_is_fenced_by_its_second(
    cluster3: Any, store: Store
) -> None:
    cluster, agents = cluster3
    host = Host.objects.get(name="et-virt05")
    pdu = f.FenceDeviceFactory(
        host=host, cluster=cluster, name="pdu-05", agent="fence_apc", plug="et-virt05", order=2
    )
    pdu.parameters = {"ip": "10.88.0.250", "username": "apc"}
    pdu.secret_parameters = {"password": "pdu-secret"}
    pdu.save()
    agents.dead_devices.add("10.88.0.254")  # every BMC is dead: the IPMI level always fails
    t = run(cluster, agents, store, 1000.0, 1005.0)
    agents.power_off("et-virt05")
    run(cluster, agents, store, t, t + 10)
    assert agents.fenced == ["et-virt05"]
    fences = [(h, c["args"]) for h, c in agents.commands if c["kind"] == "fence"]
    assert [a["agent"] for _h, a in fences] == ["fence_ipmilan", "fence_apc"]  # in order
    pdu_host, pdu_cmd = next(
        (h, c) for h, c in agents.commands if c["args"].get("agent") == "fence_apc"
    )
    opened = open_sealed(credentials.seal_key(pdu_host), pdu_host, Command.from_dict(pdu_cmd))
    assert opened.args["params"]["password"] == "pdu-secret"  # each level its own secrets
    job = Job.objects.get(kind="fence")
    assert job.status == JobStatus.SUCCEEDED
    assert job.params["alternatives"] == ["ipmi-et-virt05", "pdu-05"]
    assert [(s.stage, s.status) for s in job.steps.order_by("seq")] == [
        (0, "failed"),
        (1, "succeeded"),
    ]
    assert job.explanation == (
        "level 1 ipmi-et-virt05 failed: 10.88.0.254 does not answer (simulated); level 2 pdu-05 ok"
    )
    # the engine's reason (the host's state) and the event log say which level did it
    host.refresh_from_db()
    assert host.state == "fenced" and "level 2 pdu-05 ok" in host.state_reason
    state, where = placement()["guest1"]
    assert state == "started" and where in ("et-virt06", "et-virt07")
    start = Job.objects.filter(kind="start", params__service="guest1").latest("pk")
    assert start.created >= job.finished  # no start before the confirmed fence


@pytest.mark.django_db(transaction=True)
def test_a_fence_fails_only_when_every_level_failed(cluster3: Any, store: Store) -> None:
    cluster, agents = cluster3
    host = Host.objects.get(name="et-virt05")
    f.FenceDeviceFactory(
        host=host,
        cluster=cluster,
        name="pdu-05",
        plug="et-virt05",
        order=2,
        parameters={"ip": "10.88.0.250"},
    )
    agents.dead_devices |= {"10.88.0.254", "10.88.0.250"}
    t = run(cluster, agents, store, 1000.0, 1005.0)
    agents.power_off("et-virt05")
    run(cluster, agents, store, t, t + 8)
    assert agents.fenced == []
    job = Job.objects.filter(kind="fence").earliest("pk")
    assert job.status == JobStatus.FAILED
    assert job.explanation.startswith("every level failed: level 1 ipmi-et-virt05 failed: ")
    assert "; level 2 pdu-05 failed: 10.88.0.250 does not answer" in job.explanation
    assert placement()["guest1"][0] == "fence"  # it waits: never started without a fence
    assert Host.objects.get(name="et-virt05").state in ("unreachable", "fencing")


@pytest.mark.django_db(transaction=True)
def test_autostart_off_stays_stopped_after_a_full_power_cycle_until_a_person_starts_it(
    cluster3: Any, store: Store
) -> None:
    from console.operations import commands as operations

    cluster, agents = cluster3
    VmService.objects.filter(name="guest1").update(autostart=False)
    t = run(cluster, agents, store, 1000.0, 1003.0)
    assert placement()["guest1"] == ("stopped", None)  # new, autostart off: not started
    admin = User.objects.create_superuser("ada", password="pw")
    operations.service_command(VmService.objects.get(name="guest1"), "start", actor=admin)
    t = run(cluster, agents, store, t, t + 4)
    assert placement()["guest1"] == ("started", "et-virt05")  # a person started it
    hosts = sorted(agents.alive)
    for host in hosts:  # every host loses power at once
        agents.power_off(host)
    t = run(cluster, agents, store, t, t + 8)
    sent = len(agents.commands)
    agents.alive.update(hosts)  # and comes back, empty
    t = run(cluster, agents, store, t, t + 10)
    starts = {c["args"]["guest"] for _h, c in agents.commands[sent:] if c["kind"] == "start"}
    assert starts == {"guest2", "guest3"}  # autostart on: started again; guest1 not
    service = VmService.objects.get(name="guest1")
    assert (service.state, service.desired_state) == ("stopped", "stopped")
    assert "autostart is off" in service.state_reason
    run(cluster, agents, store, t, t + 5)
    assert placement()["guest1"] == ("stopped", None)  # and it stays so
    operations.service_command(service, "start", actor=admin)
    run(cluster, agents, store, t + 6, t + 10)
    assert placement()["guest1"][0] == "started"


@pytest.mark.django_db(transaction=True)
def test_a_clean_shutdown_drains_live_is_never_fenced_and_the_guests_return(
    cluster3: Any, store: Store
) -> None:
    cluster, agents = cluster3
    t = run(cluster, agents, store, 1000.0, 1005.0)
    sent = len(agents.commands)
    # the shutdown hook of et-virt05 (agent/shutdown.py) announces it on its own list
    woke = agents.shutdown("et-virt05", t)
    assert woke == cluster.pk  # the runner decides at once
    t = run(cluster, agents, store, t, t + 4)
    assert Host.objects.get(name="et-virt05").state_reason == "shutting down"
    assert "guest1" not in agents.running["et-virt05"]  # drained: the hook may go on
    moves = [(h, c["kind"]) for h, c in agents.commands[sent:] if c["kind"] != "define"]
    assert moves == [("et-virt05", "migrate")]  # live, never stop/start
    agents.alive.discard("et-virt05")  # powered off after the hook returned
    t = run(cluster, agents, store, t, t + 8)
    host = Host.objects.get(name="et-virt05")
    assert (host.state, host.state_reason) == ("offline", "shut down cleanly")
    assert not Job.objects.filter(kind="fence").exists()
    agents.alive.add("et-virt05")  # back: a new boot, so no longer shutting down
    agents.boots["et-virt05"] = "et-virt05-boot2"
    run(cluster, agents, store, t, t + 8)
    assert Host.objects.get(name="et-virt05").state == "online"
    assert placement()["guest1"] == ("started", "et-virt05")  # returned home
    assert [c["kind"] for _h, c in agents.commands[sent:]].count("start") == 0


@pytest.mark.django_db(transaction=True)
def test_refused_move_fails_its_job_with_the_reason(cluster3: Any, store: Store) -> None:
    from console.operations import commands as operations

    cluster, agents = cluster3
    t = run(cluster, agents, store, 1000.0, 1005.0)
    service = VmService.objects.get(name="guest1")
    with rules.use(store=store, clock=lambda: t):  # the rulebook sees the test's virtual time
        job = operations.service_command(service, "migrate", actor="tester", host="et-virt06")
    # the target goes into maintenance before the engine sees the command: it refuses
    Host.objects.filter(name="et-virt06").update(maintenance=True)
    run(cluster, agents, store, t, t + 2)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.explanation == "refused: et-virt06 is in maintenance"
    assert placement()["guest1"] == ("started", "et-virt05")


@pytest.mark.django_db(transaction=True)
def test_person_migrate_is_carried_by_its_own_job(cluster3: Any, store: Store) -> None:
    from console.operations import commands as operations

    cluster, agents = cluster3
    t = run(cluster, agents, store, 1000.0, 1005.0)
    service = VmService.objects.get(name="guest1")
    with rules.use(store=store, clock=lambda: t):
        job = operations.service_command(service, "migrate", actor="tester", host="et-virt07")
    run(cluster, agents, store, t, t + 30)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.explanation
    assert [s.kind for s in job.steps.all()] == ["migrate"]
    assert "et-virt07" in job.steps.get().args["dest_uri"]
    # the failover domain prefers et-virt05: it is not moved back (it was a person's choice)
    assert placement()["guest1"][1] == "et-virt07"


@pytest.mark.django_db(transaction=True)
def test_two_runners_never_decide_at_once(cluster3: Any, store: Store) -> None:
    cluster, agents = cluster3
    agents.heartbeat(1000.0)
    name = f"runner:{cluster.pk}"
    with store.lock(name) as taken:
        assert taken
        assert runner.run(cluster.pk, store) == []  # the other runner stands back ...
        with store.lock(name) as again:
            assert not again
    assert store.take_request(name)  # ... and leaves a wake for the holder
    reports = runner.run(cluster.pk, store)
    assert len(reports) == 1


@pytest.mark.django_db(transaction=True)
def test_import_guests_keeps_their_xml_and_adopts_them(cluster3: Any, store: Store) -> None:
    cluster, agents = cluster3
    t = run(cluster, agents, store, 1000.0, 1002.0)
    agents.running["et-virt06"].add("legacy")
    agents.heartbeat(t)
    api = APIClient()
    api.force_authenticate(User.objects.create_superuser("root", password="x-for-tests"))
    host = Host.objects.get(name="et-virt06")
    assert (
        api.post(
            f"/api/hosts/{host.pk}/import-guests/", {"guests": ["a b"]}, format="json"
        ).status_code
        == 400
    )
    assert (
        api.post(
            f"/api/hosts/{host.pk}/import-guests/", {"guests": ["guest1"]}, format="json"
        ).status_code
        == 409
    )  # already a service
    response = api.post(
        f"/api/hosts/{host.pk}/import-guests/", {"guests": ["legacy"]}, format="json"
    )
    assert response.status_code == 202
    host_name, command = agents.commands[-1]
    assert (host_name, command["kind"], command["args"]) == (
        "et-virt06",
        "dumpxml",
        {"guest": "legacy"},
    )
    xml = (
        "<domain type='kvm'><name>legacy</name><uuid>7f1d0d43-5d8e-4a36-9b3e-"
        "0c4f3a7f1a11</uuid><memory unit='MiB'>2048</memory><vcpu>2</vcpu></domain>"
    )
    ingest.handle(
        {
            "v": 2,
            "kind": "result",
            "host": "et-virt06",
            "id": command["id"],
            "ok": True,
            "data": {"name": "legacy", "xml": xml, "state": "running"},
            "error": None,
        },
        store,
        sender="et-virt06",
    )
    service = VmService.objects.get(name="legacy")
    assert (service.memory_mb, service.vcpus, service.uuid) == (
        2048,
        2,
        "7f1d0d43-5d8e-4a36-9b3e-0c4f3a7f1a11",
    )
    assert (service.state, service.host.name if service.host else None) == ("started", "et-virt06")
    sent_before = len(agents.commands)
    run(cluster, agents, store, t + 1, t + 3)  # adopted where it runs: nothing is started
    assert not [c for _, c in agents.commands[sent_before:] if c["args"].get("guest") == "legacy"]
    assert placement()["legacy"] == ("started", "et-virt06")


@pytest.mark.django_db(transaction=True)
def test_fence_runs_beside_the_console_when_no_other_host_can(
    cluster3: Any, store: Store, settings: Any
) -> None:
    cluster, agents = cluster3
    t = run(cluster, agents, store, 1000.0, 1005.0)
    # et-virt06 is in maintenance (drained, still heartbeating: it may run the fence agent)
    Host.objects.filter(name="et-virt06").update(maintenance=True)
    t = run(cluster, agents, store, t, t + 5)
    agents.power_off("et-virt05")
    run(cluster, agents, store, t, t + 8)
    fence = Job.objects.get(kind="fence")
    assert fence.steps.get().host.name == "et-virt06"  # first by name, maintenance or not
    from console.ha.actions import fence_runner

    assert fence_runner(cluster, "et-virt05", set()) is None  # nobody left: the console's agent
    assert fence_runner(cluster, "et-virt05", {"et-virt05"}) is None
    assert fence_runner(cluster, "et-virt05", {"et-virt07"}).name == "et-virt07"
    assert settings.HAVEN_CONSOLE_AGENT == "haven-console"


@pytest.mark.django_db(transaction=True)
def test_heartbeats_never_write_to_the_database(cluster3: Any, store: Store) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    _, agents = cluster3
    with CaptureQueriesContext(connection) as queries:
        for second in range(50):
            agents.heartbeat(2000.0 + second)
    sql = [q["sql"].split()[0].upper() for q in queries.captured_queries]
    assert sql and set(sql) == {"SELECT"}  # one lookup of the host's cluster each, no writes
    assert store.reports(["et-virt05"])["et-virt05"].received == 2049.0


@pytest.mark.django_db(transaction=True)
def test_a_heartbeat_with_a_bad_value_never_stops_the_runner(cluster3: Any, store: Store) -> None:
    """A negative free memory once failed the runner's whole transaction (the database's check
    constraint): HA stopped for the cluster. Found by a scenario through the runtime."""
    cluster, agents = cluster3
    t = run(cluster, agents, store, 1000.0, 1003.0)
    host = Host.objects.get(name="et-virt05")
    free_before = host.memory_free_mb
    beat = agents.heartbeat_of("et-virt05", t).to_dict()
    beat["memory_free_mib"] = -512
    agents.deliver("et-virt05", beat, t)
    runner.tick_once(cluster.pk, store, now=t)  # no IntegrityError
    host.refresh_from_db()
    assert host.memory_free_mb == free_before  # what was known, not a guess
    beat["memory_free_mib"] = 0
    agents.deliver("et-virt05", beat, t + 1)
    runner.tick_once(cluster.pk, store, now=t + 1)
    host.refresh_from_db()
    assert host.memory_free_mb == 0
    from console.ha.snapshot import load

    observed = load(cluster, store, t + 1).snapshot.hosts["et-virt05"]
    # a full host is full (the engine once saw the stored value)
    assert observed.memory_free_mb == 0


@pytest.mark.django_db(transaction=True)
def test_the_rebalancer_moves_guests_by_live_migration_once_each(
    cluster3: Any, store: Store
) -> None:
    """Opt-in per cluster: four 4 GiB guests on et-virt05 are spread by live migrations once
    the spread has lasted the hold time (60 s), each guest moved once, and the cluster page's
    plan is then empty."""
    from console.jobs.models import JobStep

    cluster, agents = cluster3
    cluster.rebalance = True
    cluster.save()
    home = Host.objects.get(name="et-virt05")
    for i in range(4):
        name = f"big{i}"
        f.VmServiceFactory(
            cluster=cluster,
            name=name,
            state="started",
            host=home,
            domain_xml=f.domain_xml(name, memory_kib=4096 * 1024),
        )
        agents.running["et-virt05"].add(name)
        agents.memory[name] = 4096  # as its define would have told the simulated host
    t = run(cluster, agents, store, 1000.0, 1050.0)
    assert not JobStep.objects.filter(kind="migrate").exists()  # holding: 60 s not over
    t = run(cluster, agents, store, t, 1100.0)
    moved = [s.args["guest"] for s in JobStep.objects.filter(kind="migrate")]
    assert moved and len(moved) == len(set(moved)) and set(moved) <= {f"big{i}" for i in range(4)}
    where = placement()
    assert sum(1 for i in range(4) if where[f"big{i}"][1] == "et-virt05") == 4 - len(moved)
    with rules.use(store=store, clock=lambda: t):
        outlook = rules.policy(cluster).rebalance
    assert outlook is not None and outlook.moves == (), outlook


def on_gfs2(cluster: Any, guest: str, mount_point: str = "/guest_roots") -> None:
    """A GFS2 file system of the cluster at ``mount_point``, and ``guest``'s disk a file on it."""
    vg = f.VolumeGroupFactory(cluster=cluster, clustered=True)
    f.FilesystemFactory(logical_volume=f.LogicalVolumeFactory(volume_group=vg),
                        mount_point=mount_point)  # fmt: skip
    service = VmService.objects.get(name=guest)
    service.domain_xml = service.domain_xml.replace(
        "</os>", "</os><devices><disk type='file' device='disk'>"
        f"<source file='{mount_point}/{guest}.img'/><target dev='vda'/></disk></devices>",
    )  # fmt: skip
    service.save()


@pytest.mark.django_db(transaction=True)
def test_a_guest_on_gfs2_returns_to_its_host_once_the_host_has_it_mounted(
    cluster3: Any, store: Store
) -> None:
    """The storage lab's return migration failed on a host that was online before its GFS2
    was mounted ("Cannot access storage file /guest_roots/guest1.img"): through the runtime,
    the heartbeat's mounts reach the engine, which waits for them, and says so."""
    cluster, agents = cluster3
    on_gfs2(cluster, "guest1")
    agents.mounts = {h: ["/guest_roots"] for h in agents.alive}
    t = run(cluster, agents, store, 1000.0, 1005.0)
    assert placement()["guest1"] == ("started", "et-virt05")
    Host.objects.filter(name="et-virt05").update(maintenance=True)
    t = run(cluster, agents, store, t, t + 4)
    away = placement()["guest1"]
    assert away[0] == "started" and away[1] != "et-virt05"
    # out of maintenance, before its GFS2 is mounted again
    agents.mounts["et-virt05"] = []
    Host.objects.filter(name="et-virt05").update(maintenance=False)
    migrations = [c for _, c in agents.sent if c["kind"] == "migrate"]
    t = run(cluster, agents, store, t, t + 4)
    assert placement()["guest1"] == away
    assert [c for _, c in agents.sent if c["kind"] == "migrate"] == migrations  # none tried
    status = snapshot.stored_status(cluster.pk).services["guest1"]
    assert status.reason == "returns to et-virt05 once et-virt05 has /guest_roots mounted"
    agents.mounts["et-virt05"] = ["/guest_roots"]
    run(cluster, agents, store, t, t + 4)
    assert placement()["guest1"] == ("started", "et-virt05")
