"""Removing, adding and repairing hosts through the services layer (API and pages alike):
the rules, the job, what is revoked and what stays. The SSH parts run on the lab
(tests/lab/test_day_two.py); here the bootstrap is not started (its entry is recorded)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient

from console import engine
from console.bootstrap import ssh as bootstrap
from console.clusters.models import FenceDevice, Host
from console.engine.status import service_to_json
from console.events.models import Event
from console.ha.models import AgentCredential, EngineServiceStatus, EngineState
from console.jobs.models import Job, JobStatus
from console.operations import membership
from console.services.models import VmService
from tests.console import factories as f

S, D = engine.ServiceState, engine.Desired


@pytest.fixture
def two(db: None) -> list[Host]:
    cluster = f.ClusterFactory(name="et")
    hosts = [
        f.HostFactory(cluster=cluster, name=f"et-virt0{i}", state="online", ssh_fingerprint="")
        for i in (5, 6)
    ]
    for h in hosts:
        f.sealing_key(h.name)
        f.FenceDeviceFactory(cluster=cluster, host=h, name=f"ipmi-{h.name}")
    return hosts


def engine_has(cluster: Any, **services: engine.ServiceStatus) -> None:
    """The engine's status as the runner stores it: a header, one row per service."""
    EngineState.objects.update_or_create(
        cluster=cluster, defaults={"status_json": engine.Status().to_json(), "ticks": 1}
    )
    EngineServiceStatus.objects.filter(cluster=cluster).delete()
    EngineServiceStatus.objects.bulk_create(
        EngineServiceStatus(cluster=cluster, name=n, status_json=service_to_json(s), tick=1)
        for n, s in services.items()
    )


def test_remove_is_refused_while_a_guest_runs_there(two: list[Host], admin_api: APIClient) -> None:
    host = two[0]
    engine_has(host.cluster, guest1=engine.ServiceStatus(S.STARTED, D.STARTED, node=host.name))
    r = admin_api.delete(f"/api/hosts/{host.pk}/")
    assert r.status_code == 409
    assert r.json()["detail"] == (
        "Guests run on et-virt05 (guest1): put it in maintenance first (its guests move away "
        "live), then remove it."
    )
    assert Host.objects.filter(pk=host.pk).exists() and not Job.objects.exists()
    assert Event.objects.get(verb="remove-host").result == "refused"
    # on its way there, or possibly still there (a silent suspect), counts the same
    engine_has(
        host.cluster,
        guest2=engine.ServiceStatus(S.MIGRATING, D.STARTED, node="et-virt06", target=host.name),
        guest3=engine.ServiceStatus(S.FENCE, D.STARTED, suspects=(host.name,)),
    )
    r = admin_api.post(f"/api/hosts/{host.pk}/remove/", {}, format="json")
    assert r.status_code == 409 and "(guest2, guest3)" in r.json()["detail"]


def test_remove_of_an_empty_host_revokes_its_credentials_and_keeps_the_rest(
    two: list[Host], admin_api: APIClient
) -> None:
    host, other = two
    engine_has(host.cluster, guest1=engine.ServiceStatus(S.STARTED, D.STARTED, node=other.name))
    service = f.VmServiceFactory(cluster=host.cluster, name="guest1", host=other)
    r = admin_api.delete(f"/api/hosts/{host.pk}/")
    assert r.status_code == 202, r.content
    job = Job.objects.get(pk=r.json()["id"])
    assert job.kind == "remove-host" and job.status == JobStatus.SUCCEEDED, job.explanation
    assert [s.kind for s in job.steps.order_by("seq")] == ["remove.forget"]  # no password
    assert not Host.objects.filter(name="et-virt05").exists()
    assert not AgentCredential.objects.filter(name="et-virt05").exists()  # revoked
    assert not FenceDevice.objects.filter(name="ipmi-et-virt05").exists()
    assert AgentCredential.objects.filter(name="et-virt06").exists()  # the others keep theirs
    assert VmService.objects.get(pk=service.pk).host == other
    done = Event.objects.filter(verb="remove-host", result="ok").get()
    assert done.object_name == "et-virt05" and "ipmi-et-virt05" in done.message


def test_removing_a_host_of_a_shared_storage_cluster_drops_it_from_corosync_everywhere(
    two: list[Host], admin_api: APIClient
) -> None:
    """With the cluster stack, the remaining online hosts are asked to drop the removed host
    from their corosync membership (the real reload runs in tests/storage_lab)."""
    host, other = two
    third = f.HostFactory(cluster=host.cluster, name="et-virt07", state="fenced")
    Job.objects.create(kind="bootstrap", cluster=host.cluster, params={"shared_storage": True})
    r = admin_api.delete(f"/api/hosts/{host.pk}/")
    assert r.status_code == 202, r.content
    removal = Job.objects.get(pk=r.json()["id"])
    assert removal.status == JobStatus.SUCCEEDED, removal.explanation
    followup = Job.objects.get(kind="corosync-remove-node")
    assert removal.steps.get(kind="remove.forget").result["corosync_job"] == followup.pk
    # only the online ones: the fenced et-virt07 reads its corosync.conf when it is repaired
    assert [(s.host.name, s.kind, s.args) for s in followup.steps.all() if s.host] == [
        (other.name, "corosync_remove_node", {"node": host.name})
    ]
    assert followup.params == {"host": host.name, "members": [other.name]}
    assert third.name not in followup.explanation
    # without shared storage: no such job
    Job.objects.filter(kind="bootstrap").delete()
    assert admin_api.delete(f"/api/hosts/{other.pk}/").status_code == 202
    assert Job.objects.filter(kind="corosync-remove-node").count() == 1


def test_a_host_being_removed_over_ssh_is_seen_leaving_cleanly_not_fenced(
    two: list[Host],
    admin_api: APIClient,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """While its agent is uninstalled (and, with shared storage, its cluster stack stopped)
    the host is silent: the removal announces it through the store's clean-shutdown mark, so
    the engine sees it shutting down and does not fence it; a failed removal takes the mark
    back; a finished one forgets its heartbeats (a host added again starts afresh)."""
    from console.ha import tasks
    from console.ha.snapshot import load
    from tests.stores import redis_store

    host, other = two
    Host.objects.filter(pk=host.pk).update(ssh_fingerprint=FP)
    failing: dict[str, str] = {}

    def uninstall(job: Job, step: Any, password: str) -> dict[str, Any]:
        hosts = load(host.cluster, shared).snapshot.hosts  # while it is taken apart
        seen.append((hosts[host.name].shutting_down, hosts[other.name].shutting_down))
        if failing:
            raise bootstrap.BootstrapError(failing["why"])
        return {"said": []}

    seen: list[tuple[bool, bool]] = []
    monkeypatch.setattr(membership, "_ssh_uninstall", uninstall)
    # the removal's thread, here (after the commit, as in production)
    monkeypatch.setattr(
        bootstrap,
        "run_after_commit",
        lambda run, job_id, secrets, what: transaction.on_commit(lambda: run(job_id, secrets)),
    )
    with redis_store() as shared:
        monkeypatch.setattr(tasks, "_store", shared)
        for name in (host.name, other.name):
            shared.put_heartbeat(name, {"boot": "b1"}, shared.clock())
        failing["why"] = "sshd said no"
        with django_capture_on_commit_callbacks(execute=True):
            r = admin_api.post(f"/api/hosts/{host.pk}/remove/", {"password": "pw"}, format="json")
        assert r.status_code == 202, r.content
        assert seen == [(True, False)]
        assert Job.objects.get(pk=r.json()["id"]).status == JobStatus.FAILED
        assert not load(host.cluster, shared).snapshot.hosts[host.name].shutting_down
        failing.clear()
        Host.objects.filter(pk=host.pk).update(maintenance=False)
        with django_capture_on_commit_callbacks(execute=True):
            r = admin_api.post(f"/api/hosts/{host.pk}/remove/", {"password": "pw"}, format="json")
        assert Job.objects.get(pk=r.json()["id"]).status == JobStatus.SUCCEEDED
        assert seen[-1] == (True, False)
        assert host.name not in shared.reports([host.name, other.name])


def test_a_silent_host_is_removable_only_once_confirmed_down(
    two: list[Host], admin_api: APIClient
) -> None:
    host = two[0]
    Host.objects.filter(pk=host.pk).update(
        state="unreachable", last_heartbeat=timezone.now() - dt.timedelta(seconds=30)
    )
    r = admin_api.delete(f"/api/hosts/{host.pk}/")
    assert r.status_code == 409
    assert "silent but not confirmed down: wait for its fence" in r.json()["detail"]
    Host.objects.filter(pk=host.pk).update(acknowledged_down_at=timezone.now())
    assert admin_api.delete(f"/api/hosts/{host.pk}/").status_code == 202
    assert not Host.objects.filter(pk=host.pk).exists()
    fenced = two[1]
    Host.objects.filter(pk=fenced.pk).update(state="fenced")
    assert admin_api.delete(f"/api/hosts/{fenced.pk}/").status_code == 202


def test_only_an_admin_removes_adds_or_repairs(two: list[Host], make_client: Any) -> None:
    host = two[0]
    for role in ("operator", "viewer"):
        api = make_client(role)
        assert api.delete(f"/api/hosts/{host.pk}/").status_code == 403
        assert api.post(f"/api/hosts/{host.pk}/repair/", {"password": "x"}).status_code == 403
        r = api.post(f"/api/clusters/{host.cluster_id}/add-hosts/", {"hosts": []}, format="json")
        assert r.status_code == 403
        api.logout()
    assert Host.objects.filter(pk=host.pk).exists()


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[Any]]]:
    """The bootstrap's entry, recorded instead of run (its rules are tested on the lab)."""
    calls: list[tuple[str, list[Any]]] = []

    def start(cluster: str, specs: list[Any], *, actor: Any, shared_storage: bool = False,
              join: Any = None, then: Any = None) -> Job:  # fmt: skip
        assert not shared_storage and join is None
        calls.append((cluster, specs))
        return Job.objects.create(kind="bootstrap", params={"hosts": [s.name for s in specs]})

    monkeypatch.setattr(bootstrap, "start_bootstrap", start)
    return calls


FP = "SHA256:" + "A" * 43


def test_add_hosts_bootstraps_new_names_and_refuses_known_ones(
    two: list[Host], admin_api: APIClient, started: list[Any]
) -> None:
    cluster = two[0].cluster
    url = f"/api/clusters/{cluster.pk}/add-hosts/"
    new = {"name": "et-virt08", "address": "10.88.0.8", "password": "pw", "fingerprint": FP}
    r = admin_api.post(url, {"hosts": [new]}, format="json")
    assert r.status_code == 202, r.content
    [(name, [spec])] = started
    assert name == "et" and (spec.name, spec.address, spec.fingerprint) == (
        "et-virt08",
        "10.88.0.8",
        FP,
    )
    r = admin_api.post(url, {"hosts": [{**new, "name": "et-virt05"}]}, format="json")
    assert r.status_code == 409
    assert "already a host of cluster et: repair it instead" in r.json()["hosts"][0]
    other = f.HostFactory(name="elsewhere")
    r = admin_api.post(url, {"hosts": [{**new, "name": other.name}]}, format="json")
    assert (
        r.status_code == 409
        and f"cluster {other.cluster.name}: remove it there" in r.json()["hosts"][0]
    )
    r = admin_api.post(url, {"hosts": [{"name": "et-virt09"}]}, format="json")
    assert r.status_code == 400 and set(r.json()["hosts"]["0"]) == {"password", "fingerprint"}
    # shared storage: an existing host's root password is needed to read the corosync key
    # (the join itself: test_join_cluster_stack.py)
    Job.objects.create(kind="bootstrap", cluster=cluster, params={"shared_storage": True})
    r = admin_api.post(url, {"hosts": [new]}, format="json")
    assert r.status_code == 400 and "shared storage" in r.json()["member_password"][0]
    assert len(started) == 1


def test_repair_runs_the_bootstrap_again_on_the_same_row(
    two: list[Host], admin_api: APIClient, started: list[Any]
) -> None:
    host = two[0]
    r = admin_api.post(f"/api/hosts/{host.pk}/repair/", {"password": "pw"}, format="json")
    assert r.status_code == 400 and "no pinned host key" in r.json()["fingerprint"][0]
    Host.objects.filter(pk=host.pk).update(ssh_fingerprint=FP)
    r = admin_api.post(f"/api/hosts/{host.pk}/repair/", {"password": "pw"}, format="json")
    assert r.status_code == 202, r.content
    [(cluster, [spec])] = started
    assert (cluster, spec.name, spec.address, spec.fingerprint) == (
        "et",
        host.name,
        host.address,
        FP,
    )
    assert Host.objects.filter(pk=host.pk).exists()


def test_the_pages_add_remove_and_repair_by_the_same_rules(
    two: list[Host], started: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from console.clusters import views as cluster_views
    from tests.console.fake_bootstrap import FakeBootstrap
    from tests.console.test_views_wizard import rows
    from tests.console.views_support import login, text

    monkeypatch.setattr(cluster_views, "_bootstrap", lambda: FakeBootstrap({"10.88.0.8": FP}))
    host, other = two
    cluster = host.cluster
    client = login("admin")
    assert f"/clusters/{cluster.pk}/hosts/add/" in text(client.get(f"/clusters/{cluster.pk}/"))
    url = f"/clusters/{cluster.pk}/hosts/add/"
    page = text(client.get(url))
    assert "Add hosts to et" in page and 'name="name"' not in page  # no cluster name asked
    scan = text(
        client.post(url, rows(("et-virt08", "10.88.0.8"), step="scan", password_mode="same"))
    )
    assert FP in scan
    data = rows(("et-virt08", "10.88.0.8"), step="create", password_mode="same", password="pw")
    data.update({"hosts-0-fingerprint": FP, "confirm": "on"})
    response = client.post(url, data)
    assert response.status_code == 302 and response["Location"].startswith("/jobs/")
    [(name, [spec])] = started
    assert (name, spec.name, spec.password) == ("et", "et-virt08", "pw")
    # the host page: removal refused while a guest runs there, with maintenance offered
    engine_has(cluster, guest1=engine.ServiceStatus(S.STARTED, D.STARTED, node=host.name))
    hp = f"/clusters/{cluster.pk}/hosts/{host.pk}/"
    assert 'id="remove-maintenance"' in text(client.get(hp))
    refused = client.post(f"{hp}remove/", {"password": ""}, follow=True)
    assert "put it in maintenance first" in text(refused)
    assert Host.objects.filter(pk=host.pk).exists()
    engine_has(cluster)
    Host.objects.filter(pk=host.pk).update(ssh_fingerprint=FP)
    repaired = client.post(f"{hp}repair/", {"password": "pw2"})
    assert repaired.status_code == 302 and started[-1][1][0].password == "pw2"
    removed = client.post(f"{hp}remove/", {"password": ""})
    assert removed.status_code == 302 and removed["Location"].startswith("/jobs/")
    assert not Host.objects.filter(pk=host.pk).exists()
    assert (
        login("operator", "op2")
        .post(f"/clusters/{cluster.pk}/hosts/{other.pk}/remove/")
        .status_code
        == 403
    )


NEW_FP = "SHA256:" + "N" * 43


def test_the_page_offers_a_changed_host_key_and_repairs_with_it_only_when_accepted(
    two: list[Host], started: list[Any], admin_api: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.console.views_support import login, text

    host = two[0]
    Host.objects.filter(pk=host.pk).update(ssh_fingerprint=FP)
    presented = {"key": NEW_FP}
    monkeypatch.setattr(bootstrap, "scan_host_key", lambda address, port=22: presented["key"])
    client = login("admin")
    hp = f"/clusters/{host.cluster.pk}/hosts/{host.pk}/"
    assert 'id="check-host-key"' in text(client.get(hp))
    page = text(client.post(f"{hp}check-key/"))
    assert NEW_FP in page and FP in page  # both shown: what it presents, what is pinned
    assert f'name="fingerprint" value="{NEW_FP}"' in page and 'id="accept-host-key"' in page
    # not ticked: the pinned key, as before
    client.post(f"{hp}repair/", {"password": "pw"})
    assert started[-1][1][0].fingerprint == FP
    # ticked: the new key, pinned for this repair, and the change is in the event log
    client.post(f"{hp}repair/", {"password": "pw", "fingerprint": NEW_FP})
    assert started[-1][1][0].fingerprint == NEW_FP
    event = Event.objects.filter(verb="host-key", object_name=host.name).latest("id")
    assert NEW_FP in event.message and FP in event.message
    # the API: the same rule, in the services layer
    r = admin_api.post(
        f"/api/hosts/{host.pk}/repair/", {"password": "pw", "fingerprint": "SHA256:short"}
    )
    assert r.status_code == 400 and "SHA256:<43 characters>" in str(r.json())
    refused = client.post(f"{hp}repair/", {"password": "pw", "fingerprint": "SHA256:short"})
    assert refused.status_code == 302 and len(started) == 2
    # the same key presented: nothing to accept
    presented["key"] = FP
    same = text(client.post(f"{hp}check-key/"))
    assert 'id="host-key-same"' in same and 'id="accept-host-key"' not in same
    # a host that does not answer: the reason, no traceback
    monkeypatch.setattr(
        bootstrap,
        "scan_host_key",
        lambda address, port=22: (_ for _ in ()).throw(
            bootstrap.BootstrapError("host unreachable: 10.88.0.5:22: connection refused")
        ),
    )
    gone = text(client.post(f"{hp}check-key/", follow=True))
    assert "host unreachable" in gone


def test_the_uninstall_removes_an_installed_version_only_when_no_other_host_uses_it(
    tmp_path: Any,
) -> None:
    """The scripts themselves (real sh and flock, on a scratch /opt and /etc): the bootstrap's
    mark, then the removal of one host's agent beside others sharing the file system."""
    import subprocess

    opt, etc = tmp_path / "opt", tmp_path / "etc"
    etc.mkdir()
    for version, users in (("v1", ["et-virt08"]), ("v2", ["et-virt05"]), ("v3", None)):
        (opt / version).mkdir(parents=True)
        (opt / version / ".haven-complete").touch()
        if users is not None:
            (opt / version / ".users").mkdir()
    (opt / "v4").mkdir()  # being installed: not complete, never marked

    def mark(version: str, host: str) -> int:
        argv = ["sh", "-c", bootstrap._MARK_USER, "haven-mark", str(opt / version), host]
        return subprocess.run(argv, check=False).returncode

    assert mark("v1", "et-virt08") == 0 and mark("v2", "et-virt05") == 0
    assert mark("v2", "et-virt08") == 0  # et-virt08 used v2 too (before an upgrade)
    assert mark("v4", "et-virt08") == 1 and not (opt / "v4" / ".users").exists()
    files = [etc / n for n in ("agent.env", "agent.sh", "boot.sh")]
    for path in files:
        path.write_text("x")
    paths = [str(etc / "unit"), str(etc / "pid"), *map(str, files), str(opt), str(etc)]
    args = [*paths, "0", "et-virt08"]  # no shared storage (the cluster stack stays as it is)
    done = subprocess.run(
        ["sh", "-c", membership._UNINSTALL, "haven-uninstall", "haven-agent-et-virt08", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    assert not any(path.exists() for path in files)
    assert not (opt / "v1").exists()  # only et-virt08 used it
    assert f"removed {opt}/v1 (no other host uses it)" in done.stdout
    assert (opt / "v2" / ".haven-complete").exists()  # et-virt05 still runs from it
    assert sorted(p.name for p in (opt / "v2" / ".users").iterdir()) == ["et-virt05"]
    assert f"kept {opt}/v2: used by et-virt05" in done.stdout
    assert (opt / "v3").exists() and (opt / "v4").exists()  # not et-virt08's: untouched
