"""Day two on real lab hosts, through the console's API: fence levels, autostart across a full
power cycle, a fourth host added to the running cluster (guests fail over to it), removed
again (refused while a guest runs there, done after maintenance, its agent uninstalled over
SSH), and a host whose agent was deleted repaired by the bootstrap again.

One module-wide cluster as in tests/lab/test_e2e.py (three lab hosts bootstrapped over SSH,
fence_ipmilan through each host's BMC, guest1..3 with one ordered failover domain each) plus
a fourth lab host et-virt08 built from the start but joined only by test 4. Tests run in file
order. A watcher fails any test during which a guest runs on two hosts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import article
import pytest
import redis

from console.clusters.models import Host
from console.ha import broker
from console.jobs.models import Job, JobStatus
from tests.lab import harness
from tests.lab.harness import HOSTS
from tests.lab.test_e2e import Cluster as LabCluster

pytestmark = pytest.mark.lab
FOURTH = "et-virt08"


class Cluster(LabCluster):
    def ok(self, response: Any, status: int = 202) -> dict[str, Any]:
        assert response.status_code == status, response.content[:800]
        data: dict[str, Any] = response.json()
        return data

    def job(self, data: dict[str, Any], timeout: float = 120.0) -> Job:
        job_id = data["id"]

        def finished() -> Job | None:
            job = Job.objects.get(pk=job_id)
            return job if job.finished else None

        job: Job = self.wait(f"job {job_id} to finish", finished, timeout)
        return job

    def agent_running(self, name: str) -> bool:
        ps = self.lab.run_in(name, ["ps", "-ww", "-eo", "args"]).stdout
        return any("-m agent" in line and f"--host {name}" in line for line in ps.splitlines())


@pytest.fixture(scope="module")
def cluster(django_db_setup: None, django_db_blocker: Any) -> Iterator[Cluster]:
    yield from harness.lab_cluster(
        django_db_blocker, Cluster, names=(*HOSTS, FOURTH), admin="day2-admin"
    )


@pytest.fixture(autouse=True)
def no_split_brain(cluster: Cluster, django_db_blocker: Any) -> Iterator[None]:
    yield from harness.watch_split_brain(cluster, django_db_blocker)


def test_1_cluster_formed_guests_at_home(cluster: Cluster) -> None:
    job = article.form_cluster(cluster.lab, actor="day2")
    assert job.status == JobStatus.SUCCEEDED, job.explanation
    cluster.wait("three hosts online", lambda: cluster.hosts() == dict.fromkeys(HOSTS, "online"))
    article.define_fencing_and_guests(cluster.api, cluster.lab, cluster.kernel)  # type: ignore[attr-defined]
    cluster.wait("guest1..3 started at home", lambda: cluster.services() == cluster.home())


def test_2_a_host_whose_first_fence_device_fails_is_fenced_by_its_second(
    cluster: Cluster,
) -> None:
    lab, api = cluster.lab, cluster.api
    host = lab.host("et-virt07")
    real = next(
        d for d in api.get("/api/fence-devices/").json()["results"] if d["name"] == "ipmi-et-virt07"
    )
    cluster.ok(api.patch(f"/api/fence-devices/{real['id']}/", {"order": 2}, format="json"), 200)
    options = host.fence_ipmilan_options()
    options.pop("password")
    cluster.ok(
        api.post(
            "/api/fence-devices/",
            {
                "cluster": real["cluster"],
                "name": "bmc-wrong-password",
                "agent": "fence_ipmilan",
                "host": real["host"],
                "order": 1,
                "parameters": options,
                "secret_parameters": {"password": "not-the-bmc-password"},
            },
            format="json",
        ),
        201,
    )
    fences = Job.objects.filter(kind="fence").count()
    lost_at = time.monotonic()
    lab.power_off("et-virt07")
    cluster.wait(
        "guest3 running on another host",
        lambda: cluster.services()["guest3"][0] == "started"
        and cluster.services()["guest3"][1] in ("et-virt05", "et-virt06"),
        timeout=60,
    )
    took = time.monotonic() - lost_at
    fence = Job.objects.filter(kind="fence").order_by("pk")[fences]
    assert fence.status == JobStatus.SUCCEEDED, fence.explanation
    steps = list(fence.steps.order_by("seq"))
    assert [(s.stage, s.status) for s in steps] == [(0, "failed"), (1, "succeeded")]
    assert all(s.args["agent"] == "fence_ipmilan" and s.args["action"] == "off" for s in steps)
    assert fence.explanation.startswith("level 1 bmc-wrong-password failed: ")
    assert fence.explanation.endswith("; level 2 ipmi-et-virt07 ok")
    start = Job.objects.filter(kind="start", params__service="guest3").latest("pk")
    assert start.created >= fence.finished, "guest3 started before the fence succeeded"
    assert not host.powered_on()
    assert "level 2 ipmi-et-virt07 ok" in Host.objects.get(name="et-virt07").state_reason
    print(
        f"level 1 failed in {(steps[0].finished - steps[0].dispatched).total_seconds():.1f} s, "
        f"level 2 fenced in {(steps[1].finished - steps[1].dispatched).total_seconds():.1f} s; "
        f"power loss -> guest3 running elsewhere in {took:.1f} s"
    )
    lab.power_on("et-virt07")
    cluster.wait("guest3 back home", lambda: cluster.services() == cluster.home(), 60)


def test_3_autostart_off_survives_a_full_power_cycle_stopped(cluster: Cluster) -> None:
    lab, api = cluster.lab, cluster.api
    guest2 = cluster.service_id("guest2")
    cluster.ok(api.patch(f"/api/services/{guest2}/", {"autostart": False}, format="json"), 200)
    starts = Job.objects.filter(kind="start", params__service="guest2").count()
    for name in HOSTS:
        lab.power_off(name)
    cluster.wait(
        "every host silent",
        lambda: all(s != "online" for s in cluster.hosts().values() if s),
        timeout=20,
    )
    time.sleep(2)
    for name in HOSTS:
        lab.power_on(name, wait=False)
    for name in HOSTS:
        lab.wait_ready(name)
    cluster.wait(
        "three hosts online", lambda: cluster.hosts() == dict.fromkeys(HOSTS, "online"), 60
    )
    cluster.wait(
        "guest1 and guest3 started again, guest2 stopped",
        lambda: cluster.services()["guest1"][0] == "started"
        and cluster.services()["guest3"][0] == "started"
        and cluster.services()["guest2"] == ("stopped", None),
        timeout=60,
    )
    time.sleep(5)  # and it stays so
    assert cluster.services()["guest2"] == ("stopped", None)
    assert Job.objects.filter(kind="start", params__service="guest2").count() == starts
    row = api.get(f"/api/services/{guest2}/").json()
    assert row["desired_state"] == "stopped" and "autostart is off" in row["state_reason"]
    assert not any("guest2" in cluster.running_on(h) for h in HOSTS)
    cluster.ok(api.post(f"/api/services/{guest2}/start/", {}, format="json"))
    cluster.wait(
        "guest2 started by a person", lambda: cluster.services()["guest2"][0] == "started", 30
    )
    cluster.ok(api.patch(f"/api/services/{guest2}/", {"autostart": True}, format="json"), 200)
    cluster.wait("every guest home", lambda: cluster.services() == cluster.home(), 60)


def test_4_a_fourth_host_is_added_to_the_running_cluster_and_guests_fail_over_to_it(
    cluster: Cluster,
) -> None:
    lab, api = cluster.lab, cluster.api
    fourth = lab.host(FOURTH)
    cluster_id = api.get("/api/clusters/").json()["results"][0]["id"]
    scanned = cluster.ok(
        api.post(
            f"/api/clusters/{cluster_id}/scan-host-key/",
            {"address": fourth.address},
            format="json",
        ),
        200,
    )
    started = time.monotonic()
    job = cluster.job(
        cluster.ok(
            api.post(
                f"/api/clusters/{cluster_id}/add-hosts/",
                {
                    "hosts": [
                        {
                            "name": FOURTH,
                            "address": fourth.address,
                            "password": fourth.root_password,
                            "fingerprint": scanned["fingerprint"],
                        }
                    ]
                },
                format="json",
            )
        ),
        timeout=180,
    )
    assert job.status == JobStatus.SUCCEEDED, job.explanation
    assert [s.kind for s in job.steps.order_by("seq")] == [
        "bootstrap.connect",
        "bootstrap.install",
        "bootstrap.configure",
        "bootstrap.register",
    ]
    print(f"{FOURTH} added in {time.monotonic() - started:.1f} s")
    cluster.wait(f"{FOURTH} online", lambda: cluster.hosts().get(FOURTH) == "online")
    assert cluster.agent_running(FOURTH)
    hosts = {h["name"]: h["id"] for h in api.get("/api/hosts/").json()["results"]}
    options = fourth.fence_ipmilan_options()
    password = options.pop("password")
    cluster.ok(
        api.post(
            "/api/fence-devices/",
            {
                "cluster": cluster_id,
                "name": f"ipmi-{FOURTH}",
                "agent": "fence_ipmilan",
                "host": hosts[FOURTH],
                "parameters": options,
                "secret_parameters": {"password": password},
            },
            format="json",
        ),
        201,
    )
    domain = next(
        d
        for d in api.get("/api/failover-domains/").json()["results"]
        if d["name"] == "prefer-et-virt05"
    )
    members = [{"host": hosts["et-virt05"], "priority": 1}, {"host": hosts[FOURTH], "priority": 2}]
    cluster.ok(
        api.patch(f"/api/failover-domains/{domain['id']}/", {"members": members}, format="json"),
        200,
    )
    lab.power_off("et-virt05")
    cluster.wait(
        f"guest1 failed over to {FOURTH}",
        lambda: cluster.services()["guest1"] == ("started", FOURTH),
        timeout=60,
    )
    assert "guest1" in cluster.running_on(FOURTH)


def test_5_the_fourth_host_is_removed_refused_while_a_guest_runs_there(cluster: Cluster) -> None:
    lab, api = cluster.lab, cluster.api
    host_id = cluster.host_id(FOURTH)
    refused = api.delete(f"/api/hosts/{host_id}/")
    assert refused.status_code == 409, refused.content
    assert refused.json()["detail"].startswith(f"Guests run on {FOURTH} (guest1): put it in")
    assert "guest1" in cluster.running_on(FOURTH)
    cluster.ok(api.post(f"/api/hosts/{host_id}/maintenance/", {"on": True}, format="json"))
    cluster.wait(
        f"guest1 drained off {FOURTH}",
        lambda: cluster.services()["guest1"][0] == "started"
        and cluster.services()["guest1"][1] in ("et-virt06", "et-virt07"),
    )
    drain = Job.objects.filter(kind="migrate", params__service="guest1").latest("pk")
    assert drain.status == JobStatus.SUCCEEDED and drain.params["source"] == FOURTH
    r = redis.Redis.from_url(cluster.redis.url)  # type: ignore[attr-defined]
    user = broker.agent_redis_user(FOURTH)
    assert user.encode() in r.execute_command("ACL", "USERS")
    password = lab.host(FOURTH).root_password
    job = cluster.job(
        cluster.ok(api.delete(f"/api/hosts/{host_id}/", {"password": password}, format="json"))
    )
    assert job.status == JobStatus.SUCCEEDED, job.explanation
    assert [s.kind for s in job.steps.order_by("seq")] == ["remove.agent", "remove.forget"]
    assert not Host.objects.filter(name=FOURTH).exists()
    assert user.encode() not in r.execute_command("ACL", "USERS")  # credentials revoked
    assert not cluster.agent_running(FOURTH)  # stopped over SSH
    etc = lab.run_in(FOURTH, ["ls", "/etc/haven"]).stdout
    assert f"agent-{FOURTH}" not in etc and f"boot-{FOURTH}" not in etc
    # the installed agent: the lab's hosts share /opt, so the others' version stays; only
    # et-virt08's mark on it goes (a host alone on its machine loses the version too)
    said = " ".join(job.steps.get(kind="remove.agent").result["said"])
    assert "kept /opt/haven-agent/" in said and "used by et-virt05 et-virt06 et-virt07" in said
    kept = said.split("kept ", 1)[1].split(":", 1)[0]
    users = lab.run_in("et-virt06", ["ls", f"{kept}/.users"]).stdout.split()
    assert FOURTH not in users and {"et-virt05", "et-virt06", "et-virt07"} <= set(users)
    assert lab.run_in("et-virt06", ["test", "-f", f"{kept}/.haven-complete"]).returncode == 0
    assert password not in str(job.steps.values_list("args", "result"))
    # et-virt05 back: guest1 returns home; the cluster forgot the fourth host
    lab.power_on("et-virt05")
    cluster.wait("every guest home", lambda: cluster.services() == cluster.home(), 60)
    assert FOURTH not in cluster.hosts()


def test_6_a_host_whose_agent_was_deleted_is_repaired_keeping_its_guests_and_history(
    cluster: Cluster,
) -> None:
    lab, api = cluster.lab, cluster.api
    name = "et-virt06"
    host = Host.objects.get(name=name)
    jobs_before = Job.objects.filter(hosts=host).count()
    cluster.ok(api.post(f"/api/hosts/{host.pk}/maintenance/", {"on": True}, format="json"))
    cluster.wait("guest2 drained", lambda: cluster.services()["guest2"][1] != name)
    # the agent deleted: its supervisor killed, its configuration and boot hook gone
    lab.run_in(
        name,
        [
            "sh",
            "-c",
            'kill -s KILL -- "-$(cat /run/haven-agent-$1.pid)"; rm -f /etc/haven/*',
            "x",
            name,
        ],
        check=True,
    )
    cluster.wait(f"{name} silent", lambda: cluster.hosts()[name] != "maintenance", 20)
    assert not cluster.agent_running(name)
    job = cluster.job(
        cluster.ok(
            api.post(
                f"/api/hosts/{host.pk}/repair/",
                {"password": lab.host(name).root_password},
                format="json",
            )
        ),
        timeout=180,
    )
    assert job.status == JobStatus.SUCCEEDED, job.explanation
    assert cluster.agent_running(name)
    cluster.wait(f"{name} back", lambda: cluster.hosts()[name] == "maintenance", 30)
    repaired = Host.objects.get(name=name)
    assert repaired.pk == host.pk  # the same row: guests, devices and history kept
    assert Job.objects.filter(hosts=repaired).count() > jobs_before
    assert repaired.fence_devices.count() == 1
    cluster.ok(api.post(f"/api/hosts/{host.pk}/maintenance/", {"on": False}, format="json"))
    cluster.wait("every guest home", lambda: cluster.services() == cluster.home(), 60)


def test_7_a_clean_shutdown_drains_live_before_the_power_goes(cluster: Cluster) -> None:
    lab = cluster.lab
    name = "et-virt05"
    fences = Job.objects.filter(kind="fence").count()
    starts = Job.objects.filter(kind="start", params__service="guest1").count()
    source_log = cluster.serial(name, "guest1")
    started = time.monotonic()
    # what systemd's haven-drain unit runs at poweroff/reboot, called directly (no systemd here)
    hook = lab.run_in(name, [f"/etc/haven/shutdown-{name}.sh"], timeout=120)
    took = time.monotonic() - started
    assert hook.returncode == 0, hook.stderr
    assert "guest1" not in cluster.running_on(name)  # drained before the hook returned
    drain = Job.objects.filter(kind="migrate", params__service="guest1").latest("pk")
    assert drain.status == JobStatus.SUCCEEDED and drain.params["source"] == name
    assert cluster.hosts()[name] == "maintenance"
    assert Host.objects.get(name=name).state_reason == "shutting down"
    # the console's row follows at the engine's next tick after the migration's result
    cluster.wait(
        "guest1's row shows where it went",
        lambda: cluster.services()["guest1"][1] in ("et-virt06", "et-virt07"),
        10,
    )
    away = cluster.services()["guest1"][1]
    last = max(int(n) for n in re.findall(r"tick (\d+)", source_log.read_text()))
    lab.power_off(name)  # the rest of the shutdown: the host goes quiet
    cluster.wait(f"{name} shut down", lambda: cluster.hosts()[name] == "offline", 20)
    assert Host.objects.get(name=name).state_reason == "shut down cleanly"
    assert Job.objects.filter(kind="fence").count() == fences  # never fenced
    after = re.findall(r"tick (\d+)", cluster.serial(away, "guest1").read_text())
    assert after and max(int(n) for n in after) > last  # the same guest, not rebooted
    lab.power_on(name)
    cluster.wait("every guest home", lambda: cluster.services() == cluster.home(), 60)
    assert Job.objects.filter(kind="start", params__service="guest1").count() == starts
    print(f"shutdown hook: drained {name} in {took:.1f} s")
