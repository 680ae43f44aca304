"""The cluster stack the bootstrap sets up with "Enable shared storage": the files it writes
and the steps a bootstrap job gets (the daemons themselves run in tests/storage_lab)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from agent.protocol import FenceArgs
from console.bootstrap import cluster_stack
from console.bootstrap import ssh as bootstrap


def test_corosync_conf_lists_every_node_with_id_and_address() -> None:
    conf = cluster_stack.corosync_conf(
        "havensv",
        [(1, "sv1", "10.89.0.11"), (2, "sv2", "10.89.0.12"), (3, "sv3", "10.89.0.13")],
        10000,
    )
    assert "cluster_name: havensv" in conf
    assert "token: 10000" in conf and "consensus: 12000" in conf and "join: 1000" in conf
    assert "transport: knet" in conf and "provider: corosync_votequorum" in conf
    assert "two_node" not in conf
    for i in (1, 2, 3):
        assert f"ring0_addr: 10.89.0.1{i}\n        name: sv{i}\n        nodeid: {i}" in conf
    # corosync's parser wants every "{" at the end of its line
    assert all(line.rstrip().endswith("{") for line in conf.splitlines() if "{" in line)
    assert conf.count("{") == conf.count("}")


def test_two_nodes_get_two_node_quorum() -> None:
    conf = cluster_stack.corosync_conf("c", [(1, "a", "10.0.0.1"), (2, "b", "10.0.0.2")], 3000)
    assert "two_node: 1" in conf


def test_a_cluster_name_corosync_cannot_take_is_refused() -> None:
    with pytest.raises(cluster_stack.ClusterStackError):
        cluster_stack.corosync_conf("bad name!", [(1, "a", "10.0.0.1")], 3000)


def test_use_lvmlockd_is_set_in_the_global_section() -> None:
    debian = "config {\n}\nglobal {\n\t# use_lvmlockd = 0\n\tumask = 077\n}\nactivation {\n}\n"
    out = cluster_stack.with_lvmlockd(debian)
    assert "global {\n\tuse_lvmlockd = 1" in out and "umask = 077" in out
    assert cluster_stack.with_lvmlockd(out) == out  # idempotent
    assert "use_lvmlockd = 1" in cluster_stack.with_lvmlockd("global {\n\tuse_lvmlockd = 0\n}\n")
    assert "use_lvmlockd = 0" not in cluster_stack.with_lvmlockd("global {\nuse_lvmlockd = 0\n}\n")


def test_one_authkey_per_job_forgotten_at_the_end() -> None:
    key = cluster_stack.authkey(4242)
    assert len(key) == 256 and cluster_stack.authkey(4242) == key
    assert cluster_stack.authkey(4243) != key
    cluster_stack.forget(4242)
    assert cluster_stack.authkey(4242) != key
    cluster_stack.forget(4242)
    cluster_stack.forget(4243)


@pytest.mark.django_db
def test_shared_storage_adds_the_cluster_steps_to_every_host() -> None:
    spec = [
        bootstrap.HostSpec(n, f"10.89.0.{i}", "pw", "SHA256:" + "A" * 43)
        for i, n in ((11, "sv1"), (12, "sv2"))
    ]
    alone = bootstrap.HostSpec("sv0", "10.89.0.10", "pw", "SHA256:" + "A" * 43)
    plain = bootstrap.create_bootstrap_job("c1", [alone], actor=None)
    assert list(plain.steps.values_list("kind", flat=True)) == list(bootstrap.STEP_KINDS)
    job = bootstrap.create_bootstrap_job("c2", spec, actor=None, shared_storage=True)
    kinds = list(job.steps.order_by("seq").values_list("kind", "host__name"))
    per_host = [*bootstrap.STEP_KINDS, *cluster_stack.STEP_KINDS]
    assert kinds == [(k, "sv1") for k in per_host] + [(k, "sv2") for k in per_host]
    assert [h.name for h in cluster_stack.members(job)] == ["sv1", "sv2"]
    assert set(cluster_stack.STEPS) <= set(bootstrap.STEPS)


@pytest.mark.django_db
def test_cluster_page_shows_each_hosts_membership_from_its_heartbeat() -> None:
    import time

    from agent.cluster_stack import parse_quorumtool
    from console.ha.store import RedisStore
    from tests.console import factories as f
    from tests.console.views_support import login, text

    cluster = f.ClusterFactory(name="sv")
    for n in ("svq1", "svq2"):
        f.HostFactory(cluster=cluster, name=n, state="online")
    store = RedisStore()
    state = {"running": True, **parse_quorumtool(QUORUMTOOL_3)}
    try:
        store.put_heartbeat("svq1", {"cluster": state}, time.time())
        store.put_heartbeat("svq2", {"cluster": {"running": False, "error": "no CMAP"}}, 1.0)
        page = text(login("admin").get(f"/clusters/{cluster.pk}/"))
    finally:
        store.r.hdel(f"{store.p}hb", "svq1", "svq2")
    page = re.sub(r"<[^>]+>", "", page)  # the words, without the markup
    assert "Cluster membership" in page
    assert "quorate node 1, 3 members: sv1, sv2, sv3" in page
    assert "corosync not answering (no CMAP)" in page


# `corosync-quorumtool -s -p` on sv1 of the storage lab (corosync 3.1.7), three members.
QUORUMTOOL_3 = """Quorum information
------------------
Date:             Tue Dec  1 20:31:43 2026
Quorum provider:  corosync_votequorum
Nodes:            3
Node ID:          1
Ring ID:          1.e
Quorate:          Yes

Votequorum information
----------------------
Expected votes:   3
Highest expected: 3
Total votes:      3
Quorum:           2
Flags:            Quorate

Membership information
----------------------
    Nodeid      Votes    Qdevice Name
         1          1         NR sv1 (local)
         2          1         NR sv2
         3          1         NR sv3
"""


def test_quorumtool_output_parsed() -> None:
    from agent.cluster_stack import parse_quorumtool

    state = parse_quorumtool(QUORUMTOOL_3)
    assert state["quorate"] is True and state["node_id"] == 1 and state["nodes_count"] == 3
    assert state["expected_votes"] == 3 and state["total_votes"] == 3 and state["quorum"] == 2
    assert [n["name"] for n in state["nodes"]] == ["sv1", "sv2", "sv3"]
    lost = QUORUMTOOL_3.replace("Quorate:          Yes", "Quorate:          No")
    assert (
        parse_quorumtool(lost.replace("         3          1         NR sv3\n", ""))["quorate"]
        is False
    )


@pytest.mark.django_db
def test_survivors_dlm_is_told_after_a_fence_or_an_acknowledgment(
    django_capture_on_commit_callbacks: Any,
) -> None:
    from console.jobs import services as jobs
    from console.jobs.models import Job
    from console.operations import commands as operations
    from console.storage import services as storage
    from tests.console import factories as f

    cluster = f.ClusterFactory(name="sv")
    a, _b = (f.HostFactory(cluster=cluster, name=n, state="online") for n in ("sva", "svb"))
    c = f.HostFactory(cluster=cluster, name="svc", state="unreachable")
    assert storage.dlm_fence_ack(c) is None  # no shared storage: nothing to tell
    f.VolumeGroupFactory(cluster=cluster, name="vg_shared", clustered=True)
    # a person's test of the device (status: on) tells dlm nothing
    with django_capture_on_commit_callbacks(execute=True):
        probe = jobs.create_job(
            "fence-test", [jobs.StepSpec.of(a, FenceArgs("fence_x", "status"))],
            cluster=cluster, params={"host": "svc"},
        )  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        jobs.apply_result(
            {"id": probe.steps.get().command_id, "ok": True,
             "data": {"outcome": "ok", "power": "on"}, "error": None},
            sender="sva",
        )  # fmt: skip
    assert probe.steps.get().status == "succeeded"
    assert not Job.objects.filter(kind="dlm-fence-ack").exists()
    with django_capture_on_commit_callbacks(execute=True):
        fence = jobs.create_job(
            "fence", [jobs.StepSpec.of(a, FenceArgs("fence_x", "off"))], cluster=cluster,
            params={"host": "svc"},
        )  # fmt: skip
    step = fence.steps.get()
    with django_capture_on_commit_callbacks(execute=True):
        jobs.apply_result(
            {"id": step.command_id, "ok": True, "data": {"outcome": "ok"}, "error": None},
            sender="sva",
        )
    ack = Job.objects.get(kind="dlm-fence-ack")
    assert sorted((s.host.name, s.kind, s.args["node"]) for s in ack.steps.all()) == [
        ("sva", "dlm_fence_ack", "svc"),
        ("svb", "dlm_fence_ack", "svc"),
    ]
    with django_capture_on_commit_callbacks(execute=True):
        operations.acknowledge_down(c, actor=None)
    assert Job.objects.filter(kind="dlm-fence-ack").count() == 2
