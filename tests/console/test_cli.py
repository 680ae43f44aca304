"""The `haven` command line against a live console (pytest-django's live server)."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from console import cli
from console.ha.models import PendingCommand
from tests.console import factories as f

pytestmark = pytest.mark.django_db(transaction=True)


def haven(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def logged_in(live_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(cli, "CONFIG", tmp_path / "cli.json")
    monkeypatch.delenv("HAVEN_URL", raising=False)
    monkeypatch.delenv("HAVEN_TOKEN", raising=False)
    User.objects.create_superuser("admin", password="right-password")
    monkeypatch.setenv("HAVEN_PASSWORD", "wrong-password")
    code, _, err = haven("login", live_server.url, "--user", "admin")
    assert code == 1 and "Unable to log in with provided credentials" in err
    monkeypatch.setenv("HAVEN_PASSWORD", "right-password")
    code, out, err = haven("login", live_server.url, "--user", "admin")
    assert code == 0, err
    assert out == f"logged in to {live_server.url} as admin\n"
    config = tmp_path / "cli.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert "right-password" not in config.read_text()
    assert json.loads(config.read_text())["token"]
    return str(live_server.url)


def test_lists_and_operations(logged_in: str, live_view: Any) -> None:
    host = f.HostFactory(name="et-virt05", state="online")
    other = f.HostFactory(name="et-virt06", cluster=host.cluster, state="online")
    f.VmServiceFactory(cluster=host.cluster, name="guest1", state="started", host=host)
    live_view.beat(host, other)
    code, out, _ = haven("services")
    assert code == 0
    assert out.splitlines()[0].split() == ["SERVICE", "STATE", "HOST", "DESIRED", "SINCE"]
    assert out.splitlines()[1].split()[:4] == ["guest1", "started", "et-virt05", "started"]
    code, out, _ = haven("hosts")
    assert code == 0 and "et-virt06" in out
    row = next(line for line in out.splitlines() if line.startswith("et-virt05"))
    assert f"/{host.memory_total_mb} MiB" in row  # the unit the fields hold
    code, out, err = haven("migrate", "guest1", "et-virt06")
    assert code == 0, err
    assert out.startswith("job ") and "migrate: pending" in out
    command = PendingCommand.objects.get()
    assert (command.kind, command.service, command.node) == ("migrate", "guest1", "et-virt06")
    code, out, _ = haven("maintenance", "et-virt06", "on")
    assert code == 0 and "maintenance-on: succeeded" in out


def test_errors_are_one_clear_line(logged_in: str) -> None:
    host = f.HostFactory(name="et-virt05", state="online")
    f.VmServiceFactory(cluster=host.cluster, name="guest1", state="started", host=host)
    assert haven("start", "nope") == (1, "", "haven: error: no service named 'nope'\n")
    code, _, err = haven("migrate", "guest1", "et-virt99")
    assert code == 1
    assert (
        err == "haven: error: 400: host: There is no host 'et-virt99' in cluster "
        f"{host.cluster.name}.\n"
    )
    code, _, err = haven("maintenance", "et-virt05", "off")
    assert (code, err) == (1, "haven: error: 409: et-virt05 is not in maintenance.\n")
    with pytest.raises(SystemExit) as usage:
        haven("maintenance", "et-virt05", "sideways")
    assert usage.value.code == 2


def test_unreachable_console(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "CONFIG", tmp_path / "cli.json")
    monkeypatch.setenv("HAVEN_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("HAVEN_TOKEN", "x")
    code, _, err = haven("services")
    assert code == 1 and err.startswith("haven: error: cannot reach the console at")
    monkeypatch.delenv("HAVEN_URL")
    assert haven("services")[2].startswith("haven: error: not logged in")


def test_what_if_prints_where_each_guest_would_go(logged_in: str, live_view: Any) -> None:
    a = f.HostFactory(name="et-virt05", state="online", memory_total_mb=4096)
    b = f.HostFactory(name="et-virt06", cluster=a.cluster, state="online", memory_total_mb=4096)
    f.FenceDeviceFactory(cluster=a.cluster, host=a, name="ipmi5")
    f.VmServiceFactory(cluster=a.cluster, name="guest1", state="started", host=a)
    live_view.beat(a, b)
    code, out, err = haven("what-if", "et-virt05")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "if et-virt05 loses power now (simulated):"
    assert "fenced: et-virt05" in out
    row = next(line for line in lines if line.strip().startswith("guest1"))
    assert row.split()[:4] == ["guest1", "et-virt05", "et-virt06", "restarts"]
    code, _, err = haven("what-if", "et-virt99")
    assert code == 1 and "no host named 'et-virt99'" in err


def test_remove_repair_and_add_hosts(
    logged_in: str, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    from console import engine
    from console.bootstrap import ssh as bootstrap
    from console.clusters.models import Host
    from console.ha.models import EngineState

    host = f.HostFactory(name="et-virt05", state="online", ssh_fingerprint="SHA256:" + "B" * 43)
    status = engine.Status(
        services={
            "guest1": engine.ServiceStatus(
                engine.ServiceState.STARTED, engine.Desired.STARTED, node="et-virt05"
            )
        }
    )
    EngineState.objects.create(cluster=host.cluster, status_json=status.to_json())
    code, _, err = haven("remove-host", "et-virt05")
    assert code == 1 and err.startswith("haven: error: 409: Guests run on et-virt05 (guest1): ")
    assert "put it in maintenance first" in err
    started: list[Any] = []

    def start(cluster: str, specs: list[Any], *, actor: Any, **_: Any) -> Any:
        from console.jobs.models import Job

        started.append((cluster, specs))
        return Job.objects.create(kind="bootstrap", status="pending")

    monkeypatch.setattr(bootstrap, "start_bootstrap", start)
    monkeypatch.setattr(bootstrap, "scan_host_key", lambda address, port=22: "SHA256:" + "C" * 43)
    monkeypatch.setattr("sys.stdin", io.StringIO("root-pw\nroot-pw\n"))
    code, out, err = haven("repair-host", "et-virt05", "--password-stdin")
    assert code == 0, err
    assert "bootstrap: pending" in out and started[-1][1][0].password == "root-pw"
    code, out, err = haven(
        "add-host",
        host.cluster.name,
        "et-virt08",
        "--address",
        "10.88.0.8",
        "--yes",
        "--password-stdin",
    )
    assert code == 0, err
    assert f"et-virt08 (10.88.0.8:22) host key SHA256:{'C' * 43}" in out
    assert (started[-1][1][0].name, started[-1][1][0].fingerprint) == (
        "et-virt08",
        "SHA256:" + "C" * 43,
    )
    code, _, err = haven(
        "add-host", host.cluster.name, "et-virt09", "--fingerprint", "SHA256:" + "D" * 43
    )
    assert code == 1 and "host key mismatch" in err and len(started) == 2
    EngineState.objects.filter(cluster=host.cluster).update(status_json=engine.Status().to_json())
    code, out, err = haven("remove-host", "et-virt05", "--wait")
    assert code == 0, err
    assert "remove-host: succeeded" in out and not Host.objects.filter(name="et-virt05").exists()


def test_admission_refusal_is_one_clear_line_and_policy_prints_the_capacity(
    logged_in: str, live_view: Any
) -> None:
    cluster = f.ClusterFactory(name="tight")
    hosts = f.half_full_hosts(cluster)
    f.VmServiceFactory(
        cluster=cluster,
        name="extra",
        state="stopped",
        desired_state="stopped",
        domain_xml=f.domain_xml("extra", memory_kib=2048 * 1024),
    )
    live_view.beat(*hosts)
    code, out, err = haven("start", "extra")
    assert (code, out) == (1, "")
    assert err == (
        "haven: error: 409: extra cannot start: admission control: the cluster would not "
        "survive 1 host failure: after losing h2, guests of priority 0 and above need 6144 MiB "
        "and 4096 MiB would be free (2048 MiB short).\n"
    )
    assert not PendingCommand.objects.exists()
    code, out, _ = haven("policy", "tight")
    assert code == 0
    assert out.splitlines()[:3] == [
        "failover capacity: survives 1 host failure; 0.0 GiB spare",
        "  worst case: losing h2",
        "rebalancer: off: the live rebalancer is off for this cluster",
    ]
