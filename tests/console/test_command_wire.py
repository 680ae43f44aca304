"""The console's commands meet the agent's parser: what ``jobs.command_for`` builds, the agent
takes (``Command.from_dict``, then each handler's typed args), and what breaks the protocol is
refused on both sides, naming what is wrong. (Sealed secrets: tests/console/test_jobs.py.)"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.commands import Dispatcher
from agent.fencing import FenceAgents
from agent.hypervisor import LibvirtHypervisor
from agent.protocol import COMMAND_KINDS, Command, ProtocolError, Result
from agent.runner import SubprocessRunner
from agent.storage import LinuxStorage
from console import engine
from console.ha import actions
from console.jobs import services as jobs
from console.jobs.models import JobStatus, StepStatus
from console.jobs.transport import RecordingTransport, use_transport
from tests.console import factories as f


@pytest.fixture
def sent() -> Iterator[RecordingTransport]:
    with use_transport(RecordingTransport()) as t:
        yield t


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Dispatcher]:
    """The real agent's dispatcher on libvirt's test driver."""
    hv = LibvirtHypervisor("test:///default", lambda _event: None)
    runner = SubprocessRunner()
    yield Dispatcher(
        host="h1",
        hypervisor=hv,
        storage=LinuxStorage(runner, fstab=tmp_path / "fstab"),
        fencing=FenceAgents(runner, [tmp_path]),
    )
    hv.close()


def over_the_wire(command: dict[str, object]) -> Command:
    """What the agent's executor takes from the queue: JSON, parsed by the protocol."""
    return Command.from_dict(json.loads(json.dumps(command)))


def run_job(sent: RecordingTransport, agent: Dispatcher, job_id: int) -> list[Result]:
    """Carry out every command of a job on ``agent`` and give the console each result."""
    results: list[Result] = []
    while len(results) < len(sent.sent):
        host, raw = sent.sent[len(results)]
        result = agent.handle(over_the_wire(raw))
        results.append(result)
        jobs.apply_result(result.to_dict(), sender=host)
    return results


@pytest.mark.django_db(transaction=True)
def test_the_engines_actions_become_commands_the_agent_carries_out(
    sent: RecordingTransport, agent: Dispatcher
) -> None:
    host = f.HostFactory(name="h1")
    service = f.VmServiceFactory(cluster=host.cluster)
    context = {
        "cluster": host.cluster,
        "hosts": {"h1": host},
        "services": {service.name: service},
        "online": {"h1"},
    }
    start = engine.Start("a1", service.name, "h1")
    stop = engine.Stop("a2", service.name, "h1")
    stray = engine.Stop("a3", service.name, "h1", reason=engine.StopReason.STRAY)
    kinds = []
    for action in (start, stop, start, stray):
        kind, steps, params = actions.steps_for(action, **context)
        job = jobs.create_job(kind, steps, cluster=host.cluster, params=params)
        results = run_job(sent, agent, job.pk)
        sent.sent.clear()
        assert [r.ok for r in results] == [True] * len(results), results
        job.refresh_from_db()
        assert job.status == JobStatus.SUCCEEDED, job.explanation
        kinds += [r.command for r in results]
    assert kinds == ["define", "start", "shutdown", "define", "start", "destroy"]
    after = agent.handle(Command("c-9", "dumpxml", {"guest": service.name}))
    assert after.data["state"] == "shutoff" and f"<name>{service.name}</name>" in after.data["xml"]


@pytest.mark.django_db(transaction=True)
def test_a_step_that_breaks_the_protocol_is_never_sent(sent: RecordingTransport) -> None:
    host = f.HostFactory()
    job = jobs.create_job("probe", [jobs.StepSpec(host, "stat", {"path": "/"})])
    assert sent.sent == []
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "stat on " in job.explanation and "unknown command kind 'stat'" in job.explanation
    assert job.steps.get().status == StepStatus.FAILED


@pytest.mark.parametrize(
    ("mangle", "code", "words"),
    [
        (lambda c: {**c, "v": 1}, "unsupported_version", "protocol version 1"),
        (lambda c: {**c, "id": "c 1; rm"}, "bad_request", "field 'id'"),
        (lambda c: {**c, "kind": "reboot"}, "unknown_command", "'reboot'"),
        (lambda c: {**c, "args": ["web1"]}, "bad_request", "field 'args'"),
        (lambda c: {**c, "reply_to": "x"}, "bad_request", "unexpected fields: ['reply_to']"),
    ],
)
def test_the_agent_refuses_a_malformed_command(
    mangle: Callable[[dict[str, Any]], dict[str, Any]], code: str, words: str
) -> None:
    good = Command("c-1", "start", {"guest": "web1"}).check().to_dict()
    assert over_the_wire(good) == Command("c-1", "start", {"guest": "web1"})
    with pytest.raises(ProtocolError) as refused:
        over_the_wire(mangle(good))
    assert refused.value.code == code and words in refused.value.message


def test_the_agent_refuses_args_of_the_wrong_type(agent: Dispatcher) -> None:
    result = agent.handle(over_the_wire(Command("c-2", "start", {"guest": 5}).check().to_dict()))
    assert not result.ok and result.error is not None
    assert (result.error.code, result.error.message) == (
        "bad_request",
        "field 'guest' must be a string",
    )


def test_the_console_checks_the_kinds_the_agent_handles(agent: Dispatcher) -> None:
    """``Command.check`` (the console's side) and the agent's handlers name the same kinds."""
    assert agent.kinds() == COMMAND_KINDS
