"""The cluster stack the bootstrap sets up with "Enable shared storage": the files it writes
and the steps a bootstrap job gets (the daemons themselves run in tests/storage_lab)."""

from __future__ import annotations

import pytest

from console.runtime import bootstrap, cluster_stack


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
