"""The agent's view of the cluster stack and the storage commands for shared VGs, on recorded
command output (the real tools run in tests/storage_lab on the storage VMs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cluster_stack import ClusterStack, parse_dlm_status, parse_quorumtool, without_node
from agent.errors import AgentError
from agent.runner import Completed, Runner
from agent.storage import LinuxStorage

# corosync-cmapctl -b nodelist.node on a three-node cluster
CMAP = """nodelist.node.0.name (str) = sv1
nodelist.node.0.nodeid (u32) = 1
nodelist.node.0.ring0_addr (str) = 10.89.0.11
nodelist.node.1.name (str) = sv2
nodelist.node.1.nodeid (u32) = 2
nodelist.node.1.ring0_addr (str) = 10.89.0.12
nodelist.node.2.name (str) = sv3
nodelist.node.2.nodeid (u32) = 3
nodelist.node.2.ring0_addr (str) = 10.89.0.13
"""
DLM_STATUS = """cluster nodeid 1 quorate 1 ring seq 20 20
daemon now 412 fence_pid 0
node 1 M add 31 rem 0 fail 0 fence 0 at 0 0
node 2 M add 33 rem 0 fail 0 fence 0 at 0 0
node 3 X add 33 rem 390 fail 390 fence 0 at 0 0
"""


class Scripted(Runner):
    """A runner that answers from a table and records what ran."""

    def __init__(self, answers: dict[str, tuple[int, str, str]]) -> None:
        self.answers, self.ran = answers, []  # type: list[list[str]]

    def spawn(self, args: list[str], timeout_s: float, input_text: str | None) -> Completed:
        self.ran.append(args)
        code, out, err = self.answers.get(args[0], (0, "", ""))
        return Completed(args, code, out, err, 0.01)


def test_dlm_status_parsed() -> None:
    assert parse_dlm_status(DLM_STATUS) == {1: "M", 2: "M", 3: "X"}


def test_fence_ack_resolves_the_node_id_from_corosyncs_nodelist(tmp_path: Path) -> None:
    runner = Scripted({"corosync-cmapctl": (0, CMAP, ""), "dlm_tool": (0, DLM_STATUS, "")})
    storage = LinuxStorage(runner, proc=tmp_path)
    assert storage.dlm_fence_ack("sv3") == {"node": "sv3", "nodeid": 3, "dlm_state": "X"}
    assert runner.ran[-2:] == [["dlm_tool", "status"], ["dlm_tool", "fence_ack", "3"]]
    with pytest.raises(AgentError, match="sv9 is not in this host's corosync nodelist"):
        storage.dlm_fence_ack("sv9")


def test_fence_ack_waits_for_dlm_to_lose_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fenced before corosync here saw it go: no acknowledgement while dlm has it as M."""
    import agent.storage

    monkeypatch.setattr(agent.storage, "DLM_LOSS_WAIT_S", 0.0)
    still = DLM_STATUS.replace("node 3 X", "node 3 M")
    runner = Scripted({"corosync-cmapctl": (0, CMAP, ""), "dlm_tool": (0, still, "")})
    storage = LinuxStorage(runner, proc=tmp_path)
    with pytest.raises(AgentError, match=r"still has sv3 \(node 3\) as a member"):
        storage.dlm_fence_ack("sv3")
    assert ["dlm_tool", "fence_ack", "3"] not in runner.ran


CONF = """totem {
    version: 2
    cluster_name: havensv
}

nodelist {
    node {
        ring0_addr: 10.89.0.11
        name: sv1
        nodeid: 1
    }
    node {
        ring0_addr: 10.89.0.13
        name: sv3
        nodeid: 3
    }
}

logging {
    to_syslog: yes
}
"""


def test_without_node_drops_only_that_nodes_block() -> None:
    out = without_node(CONF, "sv3")
    assert out is not None and "sv3" not in out and "10.89.0.13" not in out
    assert out == CONF.replace(
        "    node {\n        ring0_addr: 10.89.0.13\n        name: sv3\n        nodeid: 3\n    }\n",
        "",
    )
    assert without_node(CONF, "sv9") is None  # nothing to drop
    assert without_node(CONF, "sv") is None  # whole names only
    assert without_node(out, "sv1") is not None and "nodeid: 1" not in without_node(out, "sv1")


def test_corosync_remove_node_rewrites_the_conf_and_reloads(tmp_path: Path) -> None:
    (tmp_path / "corosync").mkdir()
    conf = tmp_path / "corosync" / "corosync.conf"
    conf.write_text(CONF)
    left = "\n".join(ln for ln in CMAP.splitlines() if ".2." not in ln and ".1." not in ln)
    runner = Scripted({"corosync-cmapctl": (0, left, "")})
    storage = LinuxStorage(runner, fstab=tmp_path / "fstab", proc=tmp_path)
    assert storage.corosync_remove_node("sv3") == {"node": "sv3", "changed": True,
                                                   "nodes": ["sv1"]}  # fmt: skip
    assert "sv3" not in conf.read_text() and ["corosync-cfgtool", "-R"] in runner.ran
    runner.ran.clear()
    assert storage.corosync_remove_node("sv3")["changed"] is False  # idempotent, no reload
    assert ["corosync-cfgtool", "-R"] not in runner.ran
    runner.answers["corosync-cmapctl"] = (0, CMAP, "")  # the reload did not take
    conf.write_text(CONF)
    with pytest.raises(AgentError, match="still lists sv3 in its nodelist after the reload"):
        storage.corosync_remove_node("sv3")


def test_lv_usage_refuses_while_mounted(tmp_path: Path) -> None:
    (tmp_path / "mounts").write_text(
        "/dev/vda / ext4 rw 0 0\n/dev/mapper/vg_shared-guest_roots /guest_roots gfs2 rw 0 0\n"
    )
    storage = LinuxStorage(Scripted({}), proc=tmp_path)
    assert storage.lv_usage("vg_shared", "guest_roots", False)["mounted"] == ["/guest_roots"]
    with pytest.raises(AgentError) as err:
        storage.lvremove("vg_shared", "guest_roots")
    assert err.value.code == "in_use"
    assert "vg_shared/guest_roots is mounted at /guest_roots: unmount it first" in err.value.message
    assert storage.lv_usage("vg_shared", "other", True)["mounted"] == []


def test_the_heartbeat_says_which_gfs2_file_systems_are_mounted(tmp_path: Path) -> None:
    from agent.heartbeat import build_heartbeat
    from agent.hypervisor import LibvirtHypervisor

    (tmp_path / "mounts").write_text(
        "/dev/vda / ext4 rw 0 0\n/dev/mapper/vg_shared-guest_roots /guest_roots gfs2 rw 0 0\n"
        "/dev/mapper/vg_shared-b /srv/b gfs2 rw,noatime 0 0\nnfs:/x /srv/nfs nfs4 rw 0 0\n"
    )
    storage = LinuxStorage(Scripted({}), proc=tmp_path)
    assert storage.shared_mounts() == ["/guest_roots", "/srv/b"]
    hv = LibvirtHypervisor("test:///default", lambda *a: None)
    beat = build_heartbeat("h1", hv, 1, 1.0, shared_mounts=storage.shared_mounts)
    assert beat.shared_mounts == ["/guest_roots", "/srv/b"]
    (tmp_path / "mounts").write_text("/dev/vda / ext4 rw 0 0\n")  # unmounted since
    assert (
        build_heartbeat("h1", hv, 2, 1.0, shared_mounts=storage.shared_mounts).shared_mounts == []
    )
    assert LinuxStorage(Scripted({}), proc=tmp_path / "none").shared_mounts() is None
    assert build_heartbeat("h1", hv, 3, 1.0).shared_mounts is None  # not read: not said


def test_shared_activation_and_refresh_argv(tmp_path: Path) -> None:
    lvs = '{"report": [{"lv": [{"lv_name": "lv1", "lv_size": "1073741824"}]}]}'
    runner = Scripted({"lvs": (0, lvs, "")})
    storage = LinuxStorage(runner, proc=tmp_path)
    storage.lv_activate("vg0", "lv0", "shared")
    storage.vg_lockstart("vg0")
    assert storage.lv_refresh("vg0", "lv1")["size_bytes"] == 1 << 30
    storage.lvcreate("vg0", "lv1", 1 << 30, activate=False)
    assert ["lvchange", "-asy", "--", "vg0/lv0"] in runner.ran
    assert ["vgchange", "--lockstart", "--", "vg0"] in runner.ran
    assert [
        "lvcreate",
        "--yes",
        "--activate",
        "n",
        "-n",
        "lv1",
        "-L",
        f"{1 << 30}b",
        "--",
        "vg0",
    ] in runner.ran
    with pytest.raises(AgentError, match="activation mode 'sometimes'"):
        storage.lv_activate("vg0", "lv0", "sometimes")


def test_membership_is_read_at_most_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.cluster_stack as cs

    out = (
        "Quorum information\n------------------\nNodes:            2\nNode ID:          2\n"
        "Quorate:          No\n\nMembership information\n----------------------\n"
        "    Nodeid      Votes Name\n         2          1 sv2 (local)\n"
    )
    runner = Scripted({"corosync-quorumtool": (2, out, "")})
    monkeypatch.setattr(cs.shutil, "which", lambda *a, **k: "/usr/sbin/corosync-quorumtool")
    stack = ClusterStack(runner, min_interval_s=60)
    state = stack.membership()
    assert state is not None and state["running"] and state["quorate"] is False
    assert state["node_id"] == 2 and [n["name"] for n in state["nodes"]] == ["sv2"]
    stack.membership()
    assert len(runner.ran) == 1  # cached within the interval
    down = ClusterStack(
        Scripted({"corosync-quorumtool": (1, "", "Cannot initialize CMAP service")})
    )
    assert down.membership() == {
        "running": False,
        "quorate": False,
        "nodes": [],
        "error": "Cannot initialize CMAP service",
    }
    monkeypatch.setattr(cs.shutil, "which", lambda *a, **k: None)
    assert ClusterStack(Scripted({})).membership() is None
    assert parse_quorumtool("")["nodes"] == []


def test_nodelist_parsed_and_a_node_added_at_its_end() -> None:
    from agent.cluster_stack import parse_nodelist, with_nodes

    assert [(n["nodeid"], n["name"], n["ring0_addr"]) for n in parse_nodelist(CONF)] == [
        ("1", "sv1", "10.89.0.11"),
        ("3", "sv3", "10.89.0.13"),
    ]
    out = with_nodes(CONF, [(4, "sv2", "10.89.0.12")])
    assert out is not None
    block = (
        "    node {\n        ring0_addr: 10.89.0.12\n        name: sv2\n        nodeid: 4\n    }\n"
    )
    assert out == CONF.replace("        nodeid: 3\n    }\n", "        nodeid: 3\n    }\n" + block)
    assert [n["name"] for n in parse_nodelist(out)] == ["sv1", "sv3", "sv2"]
    assert with_nodes(out, [(4, "sv2", "10.89.0.12")]) is None  # there already: no change
    for clash, words in (
        ((5, "sv2", "10.89.0.12"), "sv2 is already in the nodelist as node 4"),
        ((3, "sv4", "10.89.0.14"), "node id 3 or address 10.89.0.14 of sv4 is already used by sv3"),
        ((5, "sv4", "10.89.0.11"), "is already used by sv1"),
    ):
        with pytest.raises(ValueError, match=words):
            with_nodes(out, [clash])


def test_a_third_node_ends_the_two_node_special_case() -> None:
    from agent.cluster_stack import with_nodes
    from console.bootstrap.cluster_stack import corosync_conf

    two = corosync_conf("c", [(1, "a", "10.0.0.1"), (2, "b", "10.0.0.2")], 3000)
    assert "two_node: 1" in two
    three = with_nodes(two, [(3, "c", "10.0.0.3")])
    assert three == corosync_conf(
        "c", [(1, "a", "10.0.0.1"), (2, "b", "10.0.0.2"), (3, "c", "10.0.0.3")], 3000
    )


def test_corosync_add_node_rewrites_the_conf_reloads_and_checks(tmp_path: Path) -> None:
    (tmp_path / "corosync").mkdir()
    conf = tmp_path / "corosync" / "corosync.conf"
    conf.write_text(CONF)
    runner = Scripted({"corosync-cmapctl": (0, CMAP, "")})  # sv1, sv2 (id 2), sv3
    storage = LinuxStorage(runner, fstab=tmp_path / "fstab", proc=tmp_path)
    assert storage.corosync_add_node("sv2", "10.89.0.12", 2) == {
        "node": "sv2", "nodeid": 2, "changed": True, "nodes": ["sv1", "sv2", "sv3"]
    }  # fmt: skip
    assert "name: sv2" in conf.read_text() and ["corosync-cfgtool", "-R"] in runner.ran
    runner.ran.clear()
    assert storage.corosync_add_node("sv2", "10.89.0.12", 2)["changed"] is False
    assert ["corosync-cfgtool", "-R"] not in runner.ran  # idempotent, no reload
    before = conf.read_text()
    with pytest.raises(AgentError, match="sv2 is already in the nodelist as node 2"):
        storage.corosync_add_node("sv2", "10.89.0.12", 7)
    assert conf.read_text() == before  # refused: nothing changed
    runner.answers["corosync-cmapctl"] = (0, "", "")  # the reload did not take
    with pytest.raises(AgentError, match="does not list sv4 as node 4 after the reload"):
        storage.corosync_add_node("sv4", "10.89.0.14", 4)


VGS_REPORT = json.dumps({"report": [{"vg": [
    {"vg_name": "vg_shared", "vg_lock_type": "dlm"},
    {"vg_name": "vg_local", "vg_lock_type": ""},
]}]})  # fmt: skip


def test_a_clean_shutdown_leaves_the_shared_storage_in_order(tmp_path: Path) -> None:
    """After the drain: every GFS2 unmounted, then each shared VG deactivated and its
    lockspace left, then every lockspace (lvm_global): dlm has none left when it stops."""
    (tmp_path / "mounts").write_text(
        "/dev/vda / ext4 rw 0 0\n/dev/mapper/vg_shared-guest_roots /guest_roots gfs2 rw 0 0\n"
        "/dev/mapper/vg_shared-more /more gfs2 rw 0 0\n"
    )
    runner = Scripted({"vgs": (0, VGS_REPORT, "")})
    storage = LinuxStorage(runner, proc=tmp_path, lockd_running=lambda: True)
    said = storage.leave_shared_storage()
    assert [argv for argv in runner.ran if argv[0] != "vgs"] == [
        ["umount", "--", "/guest_roots"],
        ["umount", "--", "/more"],
        ["vgchange", "-an", "--", "vg_shared"],
        ["vgchange", "--lock-stop", "--", "vg_shared"],
        ["lvmlockctl", "--stop-lockspaces", "--wait", "1"],
    ]  # the local VG is left alone
    assert said[-1] == "every lockspace left"
    # a GFS2 still in use: nothing after it is tried (the lockspaces would refuse too)
    runner = Scripted({"umount": (32, "", "target is busy"), "vgs": (0, VGS_REPORT, "")})
    said = LinuxStorage(runner, proc=tmp_path, lockd_running=lambda: True).leave_shared_storage()
    assert runner.ran == [["umount", "--", "/guest_roots"]]
    assert said == ["stopped: umount exited 32: target is busy"]
    # no lvmlockd (no shared VG here): only the unmounts
    runner = Scripted({})
    assert LinuxStorage(runner, proc=tmp_path, lockd_running=lambda: False).leave_shared_storage()
    assert all(argv[0] == "umount" for argv in runner.ran)
