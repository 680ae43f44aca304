"""The SSH bootstrap, whole, on simulated hosts (console/ha/fakes.py ``FakeRemoteHosts``):
the real steps, the real Redis user of each agent, the real jobs; the hosts behind the
``RemoteHost`` port and their agents (``FakeAgents``) are simulated. No lab needed; the real
SSH is tested against the lab in test_bootstrap.py.

The agent's wheel is not built here (``agent_wheel`` returns the wheelhouse's files as they
are): building it is ``deploy/wheelhouse.py``'s business, not the bootstrap's."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from console.bootstrap import ssh as bootstrap
from console.ha import credentials, tasks
from console.ha.fakes import FakeAgents, FakeRemoteHosts
from console.ha.store import MemoryStore
from console.jobs.models import JobStatus, StepStatus
from console.jobs.transport import use_transport
from tests.stores import redis_or_skip

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]
KEY5 = "SHA256:" + "5" * 43
KEY6 = "SHA256:" + "6" * 43


@pytest.fixture
def fleet(settings: Any, tmp_path: Path) -> Iterator[tuple[FakeRemoteHosts, FakeAgents]]:
    redis_or_skip()  # the agents' Redis users are real
    settings.HAVEN_BOOTSTRAP_HEARTBEAT_TIMEOUT_S = 10
    wheel = tmp_path / "haven_agent-0.0.0+fake-py3-none-any.whl"
    wheel.write_bytes(b"not a real wheel")
    store = MemoryStore()
    agents = FakeAgents(store, period_s=0.1)
    hosts = FakeRemoteHosts(agents)
    previous, tasks._store = tasks._store, store  # the bootstrap waits on the shared store
    original_wheel = bootstrap.agent_wheel
    bootstrap.agent_wheel = lambda: ("0.0.0+fake", [wheel])  # type: ignore[assignment]
    try:
        with use_transport(agents), bootstrap.use_connector(hosts):
            agents.start()
            yield hosts, agents
    finally:
        agents.stop()
        bootstrap.agent_wheel = original_wheel  # type: ignore[assignment]
        tasks._store = previous
        for name in ("et-virt05", "et-virt06"):
            credentials.revoke(name)
    assert not agents.errors, agents.errors[0]


def spec(name: str, address: str, password: str, key: str) -> bootstrap.HostSpec:
    return bootstrap.HostSpec(name=name, address=address, password=password, fingerprint=key)


def test_two_hosts_are_bootstrapped_and_their_agents_heartbeat(
    fleet: tuple[FakeRemoteHosts, FakeAgents],
) -> None:
    hosts, agents = fleet
    h5 = hosts.add("et-virt05", "10.88.0.5", "pw5", KEY5)
    h6 = hosts.add("et-virt06", "10.88.0.6", "pw6", KEY6, init="init")  # no systemd
    specs = [
        spec("et-virt05", "10.88.0.5", "pw5", KEY5),
        spec("et-virt06", "10.88.0.6", "pw6", KEY6),
    ]
    job = bootstrap.create_bootstrap_job("lab", specs, actor="tester")
    job = bootstrap.run_bootstrap(job.pk, {s.name: s.password for s in specs})
    steps = list(job.steps.select_related("host").order_by("seq"))
    assert job.status == JobStatus.SUCCEEDED, [(s.kind, s.error) for s in steps]
    assert [s.kind for s in steps] == list(bootstrap.STEP_KINDS) * 2
    assert {s.status for s in steps} == {StepStatus.SUCCEEDED}
    connect = next(s for s in steps if s.kind == "bootstrap.connect" and s.host.name == "et-virt05")
    assert connect.result["hostname"] == "et-virt05"
    # the agent went in from the wheelhouse, its configuration is root's alone
    assert h5.uploaded == ["/tmp/haven-wheels.fake/haven_agent-0.0.0+fake-py3-none-any.whl"]
    env, mode = h5.files["/etc/haven/agent-et-virt05.env"]
    assert stat.S_IMODE(mode) == 0o600
    assert "HAVEN_AGENT_HOST=et-virt05" in env and "HAVEN_AGENT_SEAL_KEY=" in env
    assert credentials.seal_key("et-virt05") is not None  # the console kept the agent's key
    # started by systemd on one, by the boot script on the other; each then heartbeat
    assert ["systemctl", "restart", "haven-agent-et-virt05"] in h5.ran
    assert "/etc/systemd/system/haven-agent-et-virt05.service" in h5.files
    assert ["/etc/haven/boot-et-virt06.sh", "restart"] in h6.ran
    register = {s.host.name: s.result for s in steps if s.kind == "bootstrap.register"}
    assert register["et-virt05"]["started_by"] == "systemd"
    assert register["et-virt06"]["started_by"] == "supervised process"
    assert register["et-virt05"]["agent_version"] == "fake"  # from its first heartbeat
    migration = register["et-virt06"]["migration"]
    assert migration["changed"] is True  # configure_migration ran as a normal job step
    assert ("et-virt06", "configure_migration") in [(h, c["kind"]) for h, c in agents.commands]
    # the root passwords are nowhere in what the job keeps
    kept = repr([(s.args, s.result, s.error) for s in steps]) + repr(list(job.events.all()))
    assert "pw5" not in kept and "pw6" not in kept
    assert h5.closed and h6.closed  # every SSH session ends with its host's steps


def test_a_wrong_password_or_key_fails_connect_and_skips_the_rest(
    fleet: tuple[FakeRemoteHosts, FakeAgents],
) -> None:
    hosts, agents = fleet
    hosts.add("et-virt05", "10.88.0.5", "pw5", KEY5)
    hosts.add("et-virt06", "10.88.0.6", "pw6", KEY6)
    specs = [
        spec("et-virt05", "10.88.0.5", "pw5", KEY6),  # the wrong key pinned
        spec("et-virt06", "10.88.0.6", "wrong", KEY6),
    ]
    job = bootstrap.create_bootstrap_job("lab", specs, actor="tester")
    job = bootstrap.run_bootstrap(job.pk, {s.name: s.password for s in specs})
    assert job.status == JobStatus.FAILED
    steps = {(s.host.name, s.kind): s for s in job.steps.select_related("host")}
    assert steps[("et-virt05", "bootstrap.connect")].error == (
        f"host key mismatch for et-virt05: expected {KEY6}, got {KEY5}"
    )
    assert steps[("et-virt06", "bootstrap.connect")].error == "wrong root password for et-virt06"
    later = {s.status for (_, kind), s in steps.items() if kind != "bootstrap.connect"}
    assert later == {StepStatus.SKIPPED}
    assert not agents.alive  # no agent was started


def test_a_failing_command_names_the_host_and_the_tool(
    fleet: tuple[FakeRemoteHosts, FakeAgents],
) -> None:
    hosts, _ = fleet
    hosts.add("et-virt05", "10.88.0.5", "pw5", KEY5, fail={"flock": (1, "pip: no matching wheel")})
    job = bootstrap.create_bootstrap_job(
        "lab", [spec("et-virt05", "10.88.0.5", "pw5", KEY5)], actor="tester"
    )
    job = bootstrap.run_bootstrap(job.pk, {"et-virt05": "pw5"})
    steps = {s.kind: s for s in job.steps.all()}
    assert steps["bootstrap.connect"].status == StepStatus.SUCCEEDED
    assert steps["bootstrap.install"].error == (
        "installing the agent failed on et-virt05 (exit 1): pip: no matching wheel"
    )
    assert steps["bootstrap.configure"].status == StepStatus.SKIPPED
