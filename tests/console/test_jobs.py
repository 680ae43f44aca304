"""Job lifecycle: stages, dispatch after commit, results, failure, lost hosts, secrets."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet

from agent.protocol import (
    Command,
    DefineArgs,
    MigrateArgs,
    ProtocolError,
    ShutdownArgs,
    StartArgs,
)
from agent.sealing import open_sealed
from console.ha.actions import fence_step
from console.jobs import services as jobs
from console.jobs.models import JobStatus, StepStatus
from console.jobs.transport import RecordingTransport, use_transport
from tests.console import factories as f


@pytest.fixture
def sent() -> Iterator[RecordingTransport]:
    with use_transport(RecordingTransport()) as t:
        yield t


def result(command: dict, ok: bool = True, message: str = "") -> dict:  # type: ignore[type-arg]
    return {
        "v": 2,
        "kind": "result",
        "id": command["id"],
        "ok": ok,
        "data": {"x": 1},
        "error": None if ok else {"code": "libvirt_error", "message": message},
    }


@pytest.mark.django_db(transaction=True)
def test_stages_run_in_order_and_job_succeeds(sent: RecordingTransport) -> None:
    a, b = f.HostFactory(), f.HostFactory()
    job = jobs.create_job(
        "relocate",
        [
            jobs.StepSpec.of(a, ShutdownArgs("g1"), stage=0),
            jobs.StepSpec.of(b, DefineArgs("<domain/>"), stage=1),
            jobs.StepSpec.of(b, StartArgs("g1"), stage=2),
        ],
        cluster=a.cluster,
    )
    assert [(h, c["kind"]) for h, c in sent.sent] == [(a.name, "shutdown")]
    job.refresh_from_db()
    assert job.status == JobStatus.DISPATCHED
    jobs.apply_result(result(sent.sent[0][1]), sender=sent.sent[0][0])
    assert [c["kind"] for _, c in sent.sent] == ["shutdown", "define"]
    job.refresh_from_db()
    assert (job.status, job.progress) == (JobStatus.RUNNING, 33)
    jobs.apply_result(result(sent.sent[1][1]), sender=sent.sent[1][0])
    jobs.apply_result(result(sent.sent[2][1]), sender=sent.sent[2][0])
    job.refresh_from_db()
    assert (job.status, job.progress) == (JobStatus.SUCCEEDED, 100)
    assert [e.seq for e in job.events.all()] == list(range(1, job.events.count() + 1))


@pytest.mark.django_db(transaction=True)
def test_failure_skips_the_rest_and_explains(sent: RecordingTransport) -> None:
    a = f.HostFactory()
    job = jobs.create_job(
        "start",
        [
            jobs.StepSpec.of(a, DefineArgs("<domain/>")),
            jobs.StepSpec.of(a, StartArgs("g1"), stage=1),
        ],
        cluster=a.cluster,
    )
    failed = result(sent.sent[0][1], ok=False, message="XML error: no name")
    jobs.apply_result(failed, sender=sent.sent[0][0])
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.explanation == f"define on {a.name} failed: XML error: no name"
    assert [s.status for s in job.steps.all()] == [StepStatus.FAILED, StepStatus.SKIPPED]
    assert len(sent.sent) == 1
    # a repeated or stale result changes nothing
    assert jobs.apply_result(result(sent.sent[0][1]), sender=sent.sent[0][0]) is None
    assert jobs.apply_result({"id": "no-such-id", "ok": True}, sender=a.name) is None


@pytest.mark.django_db(transaction=True)
def test_nothing_is_sent_when_the_transaction_rolls_back(sent: RecordingTransport) -> None:
    from django.db import transaction

    a = f.HostFactory()
    with pytest.raises(RuntimeError), transaction.atomic():
        jobs.create_job("start", [jobs.StepSpec.of(a, StartArgs("g"))])
        raise RuntimeError("boom")
    assert sent.sent == []


@pytest.mark.django_db(transaction=True)
def test_silent_host_loses_its_jobs(sent: RecordingTransport) -> None:
    a = f.HostFactory()
    job = jobs.create_job(
        "migrate",
        [jobs.StepSpec.of(a, MigrateArgs("g", "qemu+tcp://h2/system"))],
        cluster=a.cluster,
        action_id="a-7",
    )
    jobs.mark_host_lost(a, "stopped heartbeating")
    job.refresh_from_db()
    assert job.status == JobStatus.LOST
    assert job.explanation == f"{a.name} stopped heartbeating while running migrate."
    assert [j.action_id for j in jobs.pending_engine_results(a.cluster)] == ["a-7"]
    jobs.mark_engine_notified([job.pk])
    assert jobs.pending_engine_results(a.cluster) == []


@pytest.mark.django_db(transaction=True)
def test_fence_secrets_sent_but_never_stored_or_logged(
    sent: RecordingTransport, caplog: pytest.LogCaptureFixture
) -> None:
    device = f.FenceDeviceFactory()
    device.secret_parameters = {"password": "hunter2", "hexadecimal_kg": "0badc0de"}
    device.save()
    helper = f.HostFactory(cluster=device.cluster)
    key = f.sealing_key(helper.name)
    job = jobs.create_job("fence", [fence_step(device, helper, "off")], cluster=device.cluster)
    host, command = sent.sent[0]
    assert host == helper.name
    # sealed for the helper alone: nothing secret in clear in what goes to the broker
    assert "hunter2" not in json.dumps(command) and "0badc0de" not in json.dumps(command)
    assert command["args"]["params"] == device.parameters
    opened = open_sealed(key, helper.name, Command.from_dict(command))
    assert opened.args["params"] == {
        **device.parameters,
        "password": "hunter2",
        "hexadecimal_kg": "0badc0de",
    }
    assert "sealed" not in opened.args
    with pytest.raises(ProtocolError, match="another command"):
        open_sealed(key, "someone-else", Command.from_dict(command))
    with pytest.raises(ProtocolError, match="cannot be opened"):
        open_sealed(Fernet.generate_key().decode(), helper.name, Command.from_dict(command))
    step = job.steps.get()
    assert "hunter2" not in str(step.args) and "hunter2" not in caplog.text
    assert "hunter2" not in str(list(job.events.values_list("message", "data")))


@pytest.mark.django_db(transaction=True)
def test_secrets_are_never_sent_to_an_agent_without_a_sealing_key(
    sent: RecordingTransport,
) -> None:
    device = f.FenceDeviceFactory()
    device.secret_parameters = {"password": "hunter2"}
    device.save()
    helper = f.HostFactory(cluster=device.cluster)
    job = jobs.create_job("fence", [fence_step(device, helper, "off")], cluster=device.cluster)
    assert sent.sent == []
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert f"{helper.name} has no sealing key" in job.explanation


@pytest.mark.django_db(transaction=True)
def test_a_mass_start_is_created_dispatched_and_moved_on_together(
    sent: RecordingTransport,
) -> None:
    """create_jobs, dispatch_all and apply_results (the runner's and the drainer's batches) do
    what one job at a time does: every define sent after the commit, each job's start only
    after its own define succeeded, a failed define fails its job and skips its start, a
    result from another host is ignored, and every job's log is numbered 1, 2, 3, ..."""
    from django.db import transaction

    a, b = f.HostFactory(), f.HostFactory()
    specs = [
        jobs.NewJob(
            "start",
            [
                jobs.StepSpec.of(a, DefineArgs(f"<domain><name>g{i}</name></domain>")),
                jobs.StepSpec.of(a, StartArgs(f"g{i}"), stage=1),
            ],
            {"service": f"g{i}"},
            f"start g{i} on {a.name}",
            f"act-{i}",
        )
        for i in range(5)
    ]
    with transaction.atomic(), jobs.batched_dispatch():
        made = jobs.create_jobs(specs, cluster=a.cluster)
        assert sent.sent == []  # nothing leaves before the commit
    assert [c["kind"] for _, c in sent.sent] == ["define"] * 5
    defines = [c for _, c in sent.sent]
    batch: list[tuple[str | None, dict]] = [  # type: ignore[type-arg]
        (a.name, result(defines[0])),
        (a.name, result(defines[1], ok=False, message="no such pool")),
        (b.name, result(defines[2])),  # not the host it was sent to: ignored
        (a.name, result(defines[3])),
        (a.name, {"id": "c-unknown", "ok": True}),
    ]
    with transaction.atomic(), jobs.batched_dispatch():
        steps = jobs.apply_results(batch)
    assert [s is not None for s in steps] == [True, True, False, True, False]
    starts = [c["args"]["guest"] for _, c in sent.sent[5:]]
    assert starts == ["g0", "g3"] and all(c["kind"] == "start" for _, c in sent.sent[5:])
    for job in made:
        job.refresh_from_db()
    assert [j.status for j in made] == [
        JobStatus.RUNNING,
        JobStatus.FAILED,
        JobStatus.DISPATCHED,
        JobStatus.RUNNING,
        JobStatus.DISPATCHED,
    ]
    assert "define" in made[1].explanation and "no such pool" in made[1].explanation
    assert made[1].steps.get(kind="start").status == StepStatus.SKIPPED
    assert {j.action_id for j in made} == {f"act-{i}" for i in range(5)}
    assert all(not j.engine_notified for j in made if j.status == JobStatus.FAILED)
    # the starts' results finish their jobs: each job's last line after its step's, in order
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with (
        CaptureQueriesContext(connection) as queries,
        transaction.atomic(),
        jobs.batched_dispatch(),
    ):
        jobs.apply_results([(a.name, result(c)) for _, c in sent.sent[5:]])
    inserts = [
        q["sql"] for q in queries if q["sql"].startswith("INSERT") and "jobevent" in q["sql"]
    ]
    assert len(inserts) == 2  # the steps' lines, then the finished jobs' lines: not one a job
    for job in made:
        job.refresh_from_db()
    assert [made[i].status for i in (0, 3)] == [JobStatus.SUCCEEDED] * 2
    lines = list(made[0].events.order_by("seq").values_list("message", flat=True))
    assert lines[-2:] == [f"start on {a.name}: done", "job succeeded"]
    assert made[1].events.order_by("seq").last().message.startswith("job failed: define on")
    for job in made:
        seqs = list(job.events.values_list("seq", flat=True))
        assert seqs == list(range(1, len(seqs) + 1))
