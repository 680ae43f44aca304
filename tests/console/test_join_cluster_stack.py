"""Adding a host to a cluster formed with shared storage (corosync + dlm + lvmlockd), on
simulated hosts (console/ha/fakes.py ``FakeRemoteHosts``, ``FakeAgents``): the real
bootstrap steps, jobs and Redis users; the hosts' shells and agents are simulated. The real
daemons do it in tests/storage_lab (test 10).

The corosync authkey is the secret here: read over SSH from an existing member with its root
password, held in the console's memory for the one job, written to the new host. Neither the
key nor the password may reach the database or a log."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.apps import apps
from django.core import serializers

from console.bootstrap import cluster_stack
from console.bootstrap import ssh as bootstrap
from console.clusters.models import Host
from console.ha import credentials
from console.ha.fakes import FakeAgents, FakeRemoteHost, FakeRemoteHosts
from console.jobs.models import Job, JobStatus, StepStatus
from console.operations import membership
from tests.console.test_bootstrap_fake import fleet, spec  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]
KEYS = {n: "SHA256:" + c * 43 for n, c in (("et-virt05", "5"), ("et-virt06", "6"),
                                           ("et-virt07", "7"))}  # fmt: skip
ADDRESS = {"et-virt05": "10.88.0.5", "et-virt06": "10.88.0.6", "et-virt07": "10.88.0.7"}
PASSWORD = {"et-virt05": "pw5-member-secret", "et-virt06": "pw6", "et-virt07": "pw7-new"}


@pytest.fixture
def formed(
    fleet: tuple[FakeRemoteHosts, FakeAgents],  # noqa: F811
    settings: Any,
) -> Iterator[tuple[FakeRemoteHosts, FakeAgents, dict[str, FakeRemoteHost]]]:
    """et-virt05 and et-virt06 formed with "Enable shared storage"; et-virt07 waits to join."""
    settings.HAVEN_CLUSTER_WAIT_S = 20  # simulated hosts answer at once; a failure shows fast
    hosts, agents = fleet
    fakes = {n: hosts.add(n, ADDRESS[n], PASSWORD[n], KEYS[n]) for n in ADDRESS}
    specs = [spec(n, ADDRESS[n], PASSWORD[n], KEYS[n]) for n in ("et-virt05", "et-virt06")]
    job = bootstrap.create_bootstrap_job("lab", specs, actor="tester", shared_storage=True)
    job = bootstrap.run_bootstrap(job.pk, {s.name: s.password for s in specs})
    assert job.status == JobStatus.SUCCEEDED, job.explanation
    assert fakes["et-virt05"].authkey and fakes["et-virt05"].authkey == fakes["et-virt06"].authkey
    _wait_online("et-virt05", "et-virt06")
    try:
        yield hosts, agents, fakes
    finally:
        credentials.revoke("et-virt07")


def _wait_online(*names: str) -> None:
    import time

    deadline = time.monotonic() + 20
    while Host.objects.filter(name__in=names, state="online").count() < len(names):
        assert time.monotonic() < deadline, list(Host.objects.values_list("name", "state"))
        time.sleep(0.1)


def _join_job(member_password: str = PASSWORD["et-virt05"]) -> Job:
    new = spec("et-virt07", ADDRESS["et-virt07"], PASSWORD["et-virt07"], KEYS["et-virt07"])
    member = spec("et-virt05", ADDRESS["et-virt05"], member_password, KEYS["et-virt05"])
    job = bootstrap.create_bootstrap_job(
        "lab", [new], actor="tester", shared_storage=True, join=member
    )
    return bootstrap.run_bootstrap(
        job.pk, {"et-virt07": PASSWORD["et-virt07"], "et-virt05": member_password}
    )


def _everything_stored() -> str:
    """Every row of every table, as JSON: where a secret must not be."""
    out = []
    for model in apps.get_models():
        out.append(serializers.serialize("json", model.objects.all()))
    return "\n".join(out)


def test_a_new_host_joins_through_a_member_and_the_key_is_kept_nowhere(
    formed: tuple[FakeRemoteHosts, FakeAgents, dict[str, FakeRemoteHost]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, agents, fakes = formed
    key = fakes["et-virt05"].authkey
    caplog.set_level(logging.DEBUG)
    job = _join_job()
    steps = {(s.host.name, s.kind): s for s in job.steps.select_related("host")}
    assert job.status == JobStatus.SUCCEEDED, [(k, s.error) for k, s in steps.items() if s.error]
    assert [k for (h, k) in steps if h == "et-virt05"] == list(cluster_stack.JOIN_STEP_KINDS)
    read = steps[("et-virt05", "cluster.member")].result
    assert read["nodes"] == [[1, "et-virt05", "10.88.0.5"], [2, "et-virt06", "10.88.0.6"],
                             [3, "et-virt07", "10.88.0.7"]]  # fmt: skip
    assert read["new"] == [[3, "et-virt07", "10.88.0.7"]]
    # the new host has the cluster's key and the members' corosync.conf with itself in it
    new = fakes["et-virt07"]
    assert new.authkey == key
    conf = new.files["/etc/corosync/corosync.conf"][0]
    assert conf.startswith(fakes["et-virt05"].files["/etc/corosync/corosync.conf"][0][:200])
    assert "name: et-virt07\n        nodeid: 3" in conf and "two_node" not in conf
    assert steps[("et-virt07", "cluster.corosync")].result["state"] == "quorate, 3 of 3 members"
    assert "3 of 3 nodes members" in steps[("et-virt07", "cluster.dlm")].result["state"]
    # every member was told through its agent, after the new host had its agent and packages
    told = [(h, c["args"]) for h, c in agents.commands if c["kind"] == "corosync_add_node"]
    assert sorted(h for h, _ in told) == ["et-virt05", "et-virt06"]
    assert all(a == {"node": "et-virt07", "address": "10.88.0.7", "nodeid": 3} for _, a in told)
    extend = Job.objects.get(kind="corosync-add-node")
    assert extend.status == JobStatus.SUCCEEDED and extend.params["bootstrap_job"] == job.pk
    packages = steps[("et-virt07", "cluster.packages")]
    assert packages.finished is not None and extend.created >= packages.finished
    # the key and the member's password: in no table, no log line, and gone from memory
    stored = _everything_stored()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (base64.b64encode(key).decode(), key.hex(), PASSWORD["et-virt05"],
                   PASSWORD["et-virt07"]):  # fmt: skip
        assert secret not in stored and secret not in logged
    assert key.decode("latin-1") not in stored
    assert job.pk not in cluster_stack._joins and job.pk not in cluster_stack._authkeys
    assert fakes["et-virt05"].closed  # the member's SSH session ended with its steps


def test_a_wrong_member_password_fails_before_any_member_changes(
    formed: tuple[FakeRemoteHosts, FakeAgents, dict[str, FakeRemoteHost]],
) -> None:
    _, agents, fakes = formed
    job = _join_job(member_password="not-it")
    assert job.status == JobStatus.FAILED
    member = job.steps.get(kind="cluster.member")
    assert member.error == "wrong root password for et-virt05"
    assert job.steps.get(kind="cluster.extend").status == StepStatus.SKIPPED
    assert not [c for _, c in agents.commands if c["kind"] == "corosync_add_node"]
    assert "/etc/corosync/corosync.conf" not in fakes["et-virt07"].files
    assert not fakes["et-virt07"].authkey
    assert "not-it" not in _everything_stored()


def test_a_member_without_the_cluster_stack_is_refused_by_name(
    formed: tuple[FakeRemoteHosts, FakeAgents, dict[str, FakeRemoteHost]],
) -> None:
    _, agents, fakes = formed
    del fakes["et-virt05"].files["/etc/corosync/corosync.conf"]
    job = _join_job()
    assert job.status == JobStatus.FAILED
    error = job.steps.get(kind="cluster.member").error
    assert "et-virt05 has no /etc/corosync/corosync.conf" in error
    assert not [c for _, c in agents.commands if c["kind"] == "corosync_add_node"]


def test_add_hosts_refuses_without_the_members_password_or_with_a_host_away(
    formed: tuple[FakeRemoteHosts, FakeAgents, dict[str, FakeRemoteHost]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rules live in membership.add_hosts (the API, the page and the CLI call it)."""
    from console.core.errors import Refused

    cluster = Host.objects.get(name="et-virt05").cluster
    new = spec("et-virt07", ADDRESS["et-virt07"], PASSWORD["et-virt07"], KEYS["et-virt07"])
    before = Job.objects.count()
    with pytest.raises(Refused, match="give the root password of et-virt05") as exc:
        membership.add_hosts(cluster, [new], actor="tester")
    assert exc.value.field == "member_password" and exc.value.status == 400
    with pytest.raises(Refused, match="et-virt09 is not a host of cluster lab") as exc:
        membership.add_hosts(cluster, [new], actor="tester", member="et-virt09",
                             member_password="x")  # fmt: skip
    assert exc.value.field == "member"
    Host.objects.filter(name="et-virt06").update(state="fenced")
    away = r"et-virt06 is fenced \(confirmed powered off\): every host must be online"
    with pytest.raises(Refused, match=away):
        membership.add_hosts(cluster, [new], actor="tester", member_password="x")
    assert Job.objects.count() == before  # nothing started
    assert not Host.objects.filter(name="et-virt07").exists()


def test_the_api_takes_the_members_password_write_only(
    formed: tuple[FakeRemoteHosts, FakeAgents, dict[str, FakeRemoteHost]],
    monkeypatch: pytest.MonkeyPatch,
    admin_api: Any,
) -> None:
    calls: list[dict[str, Any]] = []

    def start(cluster: str, specs: list[Any], **kw: Any) -> Job:
        calls.append(kw)
        return Job.objects.create(kind="bootstrap", params={"hosts": [s.name for s in specs]})

    monkeypatch.setattr(bootstrap, "start_bootstrap", start)
    cluster = Host.objects.get(name="et-virt05").cluster
    new = {"name": "et-virt07", "address": "10.88.0.7", "password": "pw7",
           "fingerprint": KEYS["et-virt07"]}  # fmt: skip
    url = f"/api/clusters/{cluster.pk}/add-hosts/"
    r = admin_api.post(url, {"hosts": [new]}, format="json")
    assert r.status_code == 400, r.content
    assert "shared storage" in r.json()["member_password"][0]
    r = admin_api.post(url, {"hosts": [new], "member": "et-virt06", "member_password": "pw6"},
                       format="json")  # fmt: skip
    assert r.status_code == 202, r.content
    [kw] = calls
    assert kw["shared_storage"] is True
    assert (kw["join"].name, kw["join"].password, kw["join"].fingerprint) == (
        "et-virt06", "pw6", KEYS["et-virt06"])  # fmt: skip
    assert "pw6" not in r.content.decode()


def test_journals_follow_an_add_in_the_bootstraps_own_thread_once_it_has_finished(
    formed: tuple[FakeRemoteHosts, FakeAgents, dict[str, FakeRemoteHost]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """add_hosts → the bootstrap job, then, once it has finished, the journals step."""
    import threading

    followed: list[tuple[int, str, bool]] = []
    done = threading.Event()

    def journals(job_id: int, cluster_id: int, *, actor: Any) -> list[Job]:
        job = Job.objects.get(pk=job_id)
        followed.append((job_id, job.status, job.finished is not None))
        done.set()
        return []

    monkeypatch.setattr(membership, "add_missing_journals", journals)
    cluster = Host.objects.get(name="et-virt05").cluster
    new = spec("et-virt07", ADDRESS["et-virt07"], PASSWORD["et-virt07"], KEYS["et-virt07"])
    job = membership.add_hosts(
        cluster, [new], actor="tester", member="et-virt05", member_password=PASSWORD["et-virt05"]
    )
    assert done.wait(60), "the journals step never followed the bootstrap"
    assert followed == [(job.pk, JobStatus.SUCCEEDED, True)]
