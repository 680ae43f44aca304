"""Jobs: create them, send their steps to agents after the commit, apply the results.

A job's steps are grouped in stages: every step of a stage is sent at once, the next stage
when all of them succeeded. The first failure fails the job (its explanation says which step,
on which host, and the agent's own error) and skips what had not been sent yet.

A job whose ``params["alternatives"]`` lists one label per stage (a fence job's devices, level
by level) reads its stages the other way round: they are alternatives tried in order. A failed
stage sends the next one; the first stage that succeeds ends the job (what had not been sent
is skipped), and the job fails only when every stage failed. Its explanation says what each
stage did ("level 1 ipmi5 failed: ...; level 2 pdu5 ok").
"""

from __future__ import annotations

import itertools
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from agent import names
from agent.protocol import SEALED_ARG, Command, CommandArgs, ProtocolError, decode_args
from console.clusters.models import Cluster, Host
from console.core import broker
from console.jobs.models import (
    FINISHED_STEP_STATUSES,
    Job,
    JobEvent,
    JobStatus,
    JobStep,
    StepStatus,
)
from console.jobs.transport import transport

log = logging.getLogger("haven.jobs")


@dataclass
class StepSpec:
    host: Host | None
    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    stage: int = 0
    secret_ref: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        host: Host | None,
        args: CommandArgs,
        stage: int = 0,
        *,
        secret_ref: dict[str, Any] | None = None,
    ) -> StepSpec:
        """The step that sends ``host``'s agent the command of these typed args (its kind is
        theirs; agent/protocol.py)."""
        return cls(host, args.kind, args.to_dict(), stage, dict(secret_ref or {}))


StepHook = Callable[[JobStep, dict[str, Any]], None]
_step_hooks: dict[str, list[StepHook]] = {}


def on_step_success(kind: str) -> Callable[[StepHook], StepHook]:
    """Register ``fn(step, data)`` to run (in the result's transaction) when a step of this
    kind succeeds, e.g. to store what a storage probe found."""

    def register(fn: StepHook) -> StepHook:
        _step_hooks.setdefault(kind, []).append(fn)
        return fn

    return register


def new_command_id(prefix: str = "c") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


@dataclass
class NewJob:
    """A job to create (`create_jobs`): its steps are given at once when it has any or an
    engine action (`action_id`); `message` is its first log line."""

    kind: str
    steps: list[StepSpec]
    params: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    action_id: str = ""


def create_job(
    kind: str,
    steps: list[StepSpec],
    *,
    cluster: Cluster | None = None,
    created_by: Any = None,
    params: dict[str, Any] | None = None,
    message: str = "",
    action_id: str = "",
) -> Job:
    """Create a job and its steps; the first stage is sent once the transaction commits."""
    new = NewJob(kind, steps, dict(params or {}), message, action_id)
    return create_jobs([new], cluster=cluster, created_by=created_by)[0]


def create_jobs(
    new: list[NewJob], *, cluster: Cluster | None = None, created_by: Any = None
) -> list[Job]:
    """Create jobs as `create_job` does, in a few INSERTs whatever their number (a mass
    failure's 80 starts, one transaction and ~8 queries each, took seconds on SQLite); each
    one's first stage is sent once the transaction commits (together, in `batched_dispatch`)."""
    user = created_by if getattr(created_by, "is_authenticated", False) else None
    by = created_by if isinstance(created_by, str) and created_by else None
    with transaction.atomic():
        jobs = Job.objects.bulk_create(
            Job(
                kind=n.kind,
                cluster=cluster,
                created_by=user,
                params={**({"by": by} if by else {}), **n.params},
                action_id=n.action_id,
                engine_notified=not n.action_id,
            )
            for n in new
        )
        steps: list[JobStep] = []
        links: set[tuple[int, int]] = set()
        events: list[JobEvent] = []
        for job, n in zip(jobs, new, strict=True):
            hosts = {s.host.pk: s.host for s in n.steps if s.host is not None}
            links |= {(job.pk, pk) for pk in hosts}
            steps += _step_rows(job, n.steps, first=1)
            message = n.message
            if n.steps or n.action_id:
                where = ", ".join(sorted(h.name for h in hosts.values())) or "the console"
                message = message or f"{job.kind}: {len(n.steps)} step(s) on {where}"
                _schedule_dispatch(job.pk)
            if message:
                events.append(JobEvent(job=job, seq=1, message=message))
        JobStep.objects.bulk_create(steps, batch_size=500)
        through = Job.hosts.through
        through.objects.bulk_create(
            [through(job_id=j, host_id=h) for j, h in sorted(links)], batch_size=500
        )
        JobEvent.objects.bulk_create(events, batch_size=500)
    return jobs


def _step_rows(job: Job, steps: list[StepSpec], *, first: int) -> list[JobStep]:
    """The job's new step rows, numbered from `first`, each with a fresh command id."""
    return [
        JobStep(
            job=job,
            seq=i,
            stage=s.stage,
            host=s.host,
            kind=s.kind,
            command_id=new_command_id(),
            args=s.args,
            secret_ref=s.secret_ref,
        )
        for i, s in enumerate(steps, start=first)
    ]


def _lock(job: Job) -> None:
    """Hold the job's row until the transaction ends, so two writers (the bootstrap's host
    threads, the runner) never number their step or event alike: ``Max(seq) + 1`` is read and
    written under the one lock (PostgreSQL runs them at once; SQLite one at a time anyway)."""
    lock_jobs([job.pk])


def lock_jobs(job_ids: list[int]) -> dict[int, Job]:
    """`_lock` for many jobs, in one query and in id order (two writers locking the same jobs
    never wait for each other crosswise); the rows, by id. In a transaction, before touching
    any of their steps."""
    rows = Job.objects.select_for_update().filter(pk__in=sorted(set(job_ids))).order_by("pk")
    return {job.pk: job for job in rows}


def attach_steps(job: Job, steps: list[StepSpec], *, action_id: str = "", message: str = "") -> Job:
    """Give a job its steps (e.g. a person's command once the engine decided how to do it)."""
    with transaction.atomic():
        hosts = {s.host.pk: s.host for s in steps if s.host is not None}
        job.hosts.add(*hosts.values())
        _lock(job)
        first = (job.steps.aggregate(m=Max("seq"))["m"] or 0) + 1
        JobStep.objects.bulk_create(_step_rows(job, steps, first=first))
        if action_id:
            job.action_id, job.engine_notified = action_id, False
            job.save(update_fields=["action_id", "engine_notified"])
        where = ", ".join(sorted(h.name for h in hosts.values())) or "the console"
        add_event(job, message or f"{job.kind}: {len(steps)} step(s) on {where}")
        _schedule_dispatch(job.pk)
    return job


_batch = threading.local()


@contextmanager
def batched_dispatch() -> Iterator[None]:
    """Jobs given steps inside are dispatched together once the transaction commits, in one
    transaction (the runner's mass start: 80 jobs dispatched one transaction each took seconds
    on SQLite). Per thread; outside it, each job is dispatched on its own commit."""
    outer = getattr(_batch, "ids", None)
    _batch.ids = ids = [] if outer is None else outer
    try:
        yield
    finally:
        if outer is None:
            _batch.ids = None
            if ids:
                transaction.on_commit(lambda: dispatch_all(ids))


def _schedule_dispatch(job_id: int) -> None:
    ids = getattr(_batch, "ids", None)
    if ids is None:
        transaction.on_commit(lambda: dispatch(job_id))
    else:
        ids.append(job_id)


def dispatch_all(job_ids: list[int]) -> None:
    """`dispatch` many jobs at once: their rows read in two queries, the steps they send marked
    in one UPDATE, the commands handed to the broker together after the commit (a mass start's
    80 jobs, dispatched one transaction each, took seconds on SQLite). A job that cannot be
    dispatched (its own savepoint rolled back, logged) does not hold up the others."""
    ids = list(dict.fromkeys(job_ids))
    if not ids:
        return
    sends: list[Send] = []
    with transaction.atomic():
        jobs = lock_jobs(ids)
        steps: dict[int, list[JobStep]] = {}
        for step in (
            JobStep.objects.filter(job_id__in=list(jobs))
            .select_related("host")
            .order_by("job_id", "stage", "seq")
        ):
            steps.setdefault(step.job_id, []).append(step)
        now = timezone.now()
        sent_steps: list[int] = []
        started: list[int] = []
        for job_id in ids:
            job = jobs.get(job_id)
            if job is None:
                continue
            try:
                with transaction.atomic():
                    out = _stage_sends(job, steps.get(job_id, []), now)
            except Exception:
                log.exception("job %s could not be dispatched", job_id)
                continue
            sends.extend(send for _, send in out)
            sent_steps.extend(step.pk for step, _ in out)
            if out and job.status == JobStatus.PENDING:
                started.append(job.pk)
        JobStep.objects.filter(pk__in=sent_steps).update(
            status=StepStatus.DISPATCHED, dispatched=now
        )
        Job.objects.filter(pk__in=started).update(status=JobStatus.DISPATCHED, started=now)
        # Sent only after the commit: an agent never sees a step the database does not have.
        transaction.on_commit(lambda: _send_all(sends))


def finish_job(job: Job, *, ok: bool, explanation: str = "") -> Job:
    """End a job that needs no agent (accepted at once, refused, recorded); the job as saved."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        _finish(job, JobStatus.SUCCEEDED if ok else JobStatus.FAILED, explanation)
    return job


def add_event(
    job: Job,
    message: str,
    *,
    level: str = JobEvent.Level.INFO,
    host: Host | None = None,
    step: str = "",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Append to the job's log; ``seq`` is the next number within the job."""
    with transaction.atomic():
        _lock(job)
        last = JobEvent.objects.filter(job=job).aggregate(m=Max("seq"))["m"] or 0
        return JobEvent.objects.create(
            job=job,
            seq=last + 1,
            message=message,
            level=level,
            host=host,
            step=step,
            data=data or {},
        )


class Unsendable(Exception):
    """A step cannot become a command: its agent has no sealing key for its secrets, or what it
    would send does not follow the protocol (agent/protocol.py ``Command.check``)."""


def _with_secrets(step: JobStep) -> tuple[dict[str, Any], set[str], set[str]]:
    """The step's args with the secrets it refers to filled in (a fence device's parameters,
    new broker credentials), and which args and which ``params`` are secret."""
    from console.ha import credentials

    args = dict(step.args)
    secret = {k for k in args if names.is_secret(k)}
    params = dict(args.get("params") or {})
    secret_params = {k for k in params if names.is_secret(k)}
    device_id = step.secret_ref.get("fence_device")
    if device_id is not None:
        from console.clusters.models import FenceDevice

        device_secrets = FenceDevice.objects.get(pk=device_id).secret_parameters
        params.update(device_secrets)
        secret_params |= set(device_secrets)
    if "params" in args or secret_params:
        args["params"] = params
    if "rotation" in step.secret_ref:  # new broker credentials, sealed with the current key
        rotation = credentials.pending_secrets(str(step.secret_ref["rotation"]))
        args.update(rotation)
        secret |= set(rotation)
    return args, secret, secret_params


def _seal(
    step: JobStep, target: str, args: dict[str, Any], secret: set[str], secret_params: set[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The args to send (every secret sealed for ``target`` alone, agent/sealing.py), and a copy
    for logs with every secret value replaced."""
    from agent.sealing import seal
    from console.ha import credentials

    clear = {k: v for k, v in args.items() if k not in secret}
    sealed = {k: v for k, v in args.items() if k in secret}
    redacted = {**clear, **dict.fromkeys(sealed, "***")}
    params = clear.get("params") or {}
    hidden = {k: v for k, v in params.items() if k in secret_params}
    if hidden:
        clear["params"] = {k: v for k, v in params.items() if k not in secret_params}
        sealed["params"] = hidden
        redacted["params"] = {**clear["params"], **dict.fromkeys(hidden, "***")}
    if not sealed:
        return clear, redacted
    key = credentials.seal_key(target)
    if key is None:
        raise Unsendable(
            f"{step.kind} on {target} needs secrets, and {target} has no sealing key: "
            "bootstrap the host again (or rotate its credentials)"
        )
    clear[SEALED_ARG] = seal(key, target, step.command_id, sealed)
    return clear, redacted


#: one command to send: (host, command, the same with its secrets redacted)
Send = tuple[str, dict[str, Any], dict[str, Any]]


#: the console's own steps (the SSH bootstrap's): not agent commands. The bootstrap takes each
#: before the dispatcher sees it; only the simulated fleet of the UI tests is sent them.
CONSOLE_STEP_PREFIXES = ("bootstrap.", "cluster.")


def command_for(step: JobStep, target: str) -> tuple[Command, Command]:
    """The one place a step becomes the command sent to ``target``'s agent: its args (secrets
    filled in) decoded into the kind's typed args and encoded again, by the rules the agent
    decodes them with (agent/protocol.py ``Command.check``, ``decode_args``), then every secret
    sealed; and its copy for logs (secrets redacted). Raises ``Unsendable`` saying why a step
    cannot be sent."""
    args, secret, secret_params = _with_secrets(step)
    try:
        if not step.kind.startswith(CONSOLE_STEP_PREFIXES):
            Command(id=step.command_id, kind=step.kind, args=args).check()
            args = decode_args(step.kind, args).to_dict()
    except ProtocolError as exc:
        raise Unsendable(f"{step.kind} on {target} cannot be sent: {exc}") from exc
    sent, redacted = _seal(step, target, args, secret, secret_params)
    command = Command(id=step.command_id, kind=step.kind, args=sent)
    return command, replace(command, args=redacted)


def dispatch(job_id: int) -> None:
    """Send every step of the job's current stage that has not been sent yet."""
    dispatch_all([job_id])


def _stage_sends(job: Job, steps: list[JobStep], now: Any) -> list[tuple[JobStep, Send]]:
    """What to send of the job's current stage (the steps not sent yet), each with its step;
    the caller marks them dispatched. A step whose secrets cannot be sealed fails the job."""
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.LOST):
        return []
    open_steps = [s for s in steps if s.status not in FINISHED_STEP_STATUSES]
    if not open_steps:
        return []
    stage = open_steps[0].stage
    out: list[tuple[JobStep, Send]] = []
    unsent: JobStep | None = None
    for step in open_steps:
        if step.stage != stage or step.status != StepStatus.PENDING:
            continue
        # Steps without a host go to the agent that runs beside the console.
        target = step.host.name if step.host is not None else settings.HAVEN_CONSOLE_AGENT
        try:
            command, redacted = command_for(step, target)
        except Unsendable as exc:
            step.status, step.error, step.finished = StepStatus.FAILED, str(exc), now
            step.save(update_fields=["status", "error", "finished"])
            unsent = unsent or step
            continue
        out.append((step, (target, command.to_dict(), redacted.to_dict())))
        step.status, step.dispatched = StepStatus.DISPATCHED, now
    if unsent is not None:
        if out and job.status == JobStatus.PENDING:
            job.status, job.started = JobStatus.DISPATCHED, now
            job.save(update_fields=["status", "started"])
        JobStep.objects.filter(pk__in=[step.pk for step, _ in out]).update(
            status=StepStatus.DISPATCHED, dispatched=now
        )
        add_event(job, unsent.error, level=JobEvent.Level.ERROR, host=unsent.host)
        _advance(job, failed_step=unsent)
    return out


def _send_all(sends: list[Send]) -> None:
    """Hand the commands to the broker, together when the transport can (one connection)."""
    t = transport()
    send_many = getattr(t, "send_many", None)
    if send_many is not None:
        send_many(sends)
        return
    for host, command, redacted in sends:
        try:
            t.send(host, command, redacted)
        except Exception as exc:  # the broker is away: the step stays dispatched, times out
            broker.log_failure(log, f"could not send {command['kind']} to {host}", exc)


def apply_result(message: dict[str, Any], *, sender: str | None) -> JobStep | None:
    """Record a result for a step; move the job on. Unknown ids are ignored, and so is a result
    from any host but the one the step was sent to (``sender``: the host whose inbound list it
    came from; None only for the console's own steps, which never come over the wire)."""
    return apply_results([(sender, message)])[0]


def apply_results(results: list[tuple[str | None, dict[str, Any]]]) -> list[JobStep | None]:
    """`apply_result` for many (sender, result) at once, in one transaction: the steps read in
    one query and written in one, their log lines in one INSERT, each job moved on once (a mass
    start's 80 define results, ~11 queries each, took seconds on SQLite). Returns each
    result's step (its ``job`` as moved on), None where a result was ignored."""
    ids = [str(message.get("id", "")) for _, message in results]
    out: list[JobStep | None] = []
    with transaction.atomic():
        # the jobs first, then their steps: every writer takes them in this order (a console
        # thread that updated a step before taking its job's lock deadlocked on PostgreSQL)
        lock_jobs(list(JobStep.objects.filter(command_id__in=ids).values_list("job_id", flat=True)))
        # lock the steps only: PostgreSQL refuses FOR UPDATE on the nullable host join
        found = {
            s.command_id: s
            for s in JobStep.objects.select_for_update(of=("self",))
            .select_related("job", "host")
            .filter(command_id__in=ids)
        }
        applied: list[tuple[JobStep, dict[str, Any]]] = []
        for (sender, message), command_id in zip(results, ids, strict=True):
            step = found.get(command_id)
            if step is None or step.status in FINISHED_STEP_STATUSES:
                out.append(None)
                continue
            expected = step.host.name if step.host is not None else settings.HAVEN_CONSOLE_AGENT
            if sender is not None and sender != expected:
                log.warning(
                    "refused a result for command %s from %s: it was sent to %s",
                    command_id,
                    sender,
                    expected,
                )
                out.append(None)
                continue
            ok = bool(message.get("ok"))
            error = message.get("error") or {}
            step.status = StepStatus.SUCCEEDED if ok else StepStatus.FAILED
            step.result = message.get("data") or {}
            step.error = "" if ok else str(error.get("message") or "failed")
            step.finished = timezone.now()
            applied.append((step, message))
            out.append(step)
        JobStep.objects.bulk_update(
            [step for step, _ in applied], ["status", "result", "error", "finished"], batch_size=200
        )
        events: list[JobEvent] = []
        for step, message in applied:
            host_name = step.host.name if step.host else "the console"
            if step.status == StepStatus.SUCCEEDED:
                for hook in _step_hooks.get(step.kind, []):
                    hook(step, step.result)
                text, level = f"{step.kind} on {host_name}: done", JobEvent.Level.INFO
                data = {"duration_s": message.get("duration_s")}
            else:
                error = message.get("error") or {}
                text = f"{step.kind} on {host_name} failed: {step.error}"
                level = JobEvent.Level.ERROR
                data = {"code": error.get("code", ""), "stderr": error.get("stderr", "")}
            events.append(
                JobEvent(job=step.job, message=text, level=level, host=step.host, step=step.kind,
                         data=data)
            )  # fmt: skip
        by_job: dict[int, list[JobStep]] = {}
        for step, _ in applied:
            by_job.setdefault(step.job_id, []).append(step)
        locked = lock_jobs(list(by_job))  # before the events are numbered (`_lock`)
        _append_events(events)
        # each job moved on once, with every result of this batch filed (the first failure
        # fails it, as one result at a time would)
        all_steps: dict[int, list[JobStep]] = {}
        for row in JobStep.objects.filter(job_id__in=list(by_job)):
            all_steps.setdefault(row.job_id, []).append(row)
        # the jobs that finish: their last log line numbered and written together (one
        # lock, one count and one INSERT each made a mass start's 80 start results ~0.3 s)
        outer = getattr(_batch, "events", None)
        finished: list[JobEvent] = []
        _batch.events = finished
        try:
            for job_id, mine in by_job.items():
                job = locked[job_id]
                failed = next((s for s in mine if s.status == StepStatus.FAILED), None)
                _advance(job, failed_step=failed, steps=all_steps.get(job_id, []))
                for step in mine:
                    step.job = job
        finally:
            _batch.events = outer
        _append_events(finished)
    return out


def _append_events(events: list[JobEvent]) -> None:
    """Append job log lines in one INSERT, each numbered after its job's last one (the
    caller holds the jobs' locks, `lock_jobs`)."""
    if not events:
        return
    last = dict(
        JobEvent.objects.filter(job_id__in={e.job_id for e in events})
        .values("job_id")
        .annotate(m=Max("seq"))
        .values_list("job_id", "m")
    )
    for event in events:
        last[event.job_id] = event.seq = (last.get(event.job_id) or 0) + 1
    JobEvent.objects.bulk_create(events, batch_size=500)


def finish_console_step(
    step: JobStep, *, ok: bool, message: str, data: dict[str, Any] | None = None
) -> None:
    """Record the outcome of a step the console ran itself (e.g. SSH bootstrap)."""
    apply_result(
        {
            "id": step.command_id,
            "ok": ok,
            "data": data or {},
            "error": None if ok else {"message": message},
        },
        sender=None,
    )


#: jobs whose steps the console runs itself over SSH (console/bootstrap/ssh.py,
#: console/operations/membership.py): never sent to the host's agent, so its silence does not
#: lose them (a host bootstrapped again under a name the engine knew is silent until its agent
#: runs)
CONSOLE_JOB_KINDS = ("bootstrap", "remove-host")


def mark_host_lost(host: Host, reason: str) -> list[Job]:
    """Steps sent to a silent host will not be answered: they and their jobs are lost."""
    lost_jobs: list[Job] = []
    with transaction.atomic():
        steps = list(
            JobStep.objects.select_for_update(of=("self",))
            .select_related("job")
            .filter(host=host, status=StepStatus.DISPATCHED)
            .exclude(job__kind__in=CONSOLE_JOB_KINDS)
        )
        now = timezone.now()
        for step in steps:
            step.status, step.finished, step.error = StepStatus.LOST, now, reason
            step.save(update_fields=["status", "finished", "error"])
        for job_id, group in itertools.groupby(steps, key=lambda s: s.job_id):
            job = Job.objects.select_for_update().get(pk=job_id)
            kinds = ", ".join(sorted({s.kind for s in group}))
            _finish(job, JobStatus.LOST, f"{host.name} {reason} while running {kinds}.")
            lost_jobs.append(job)
    return lost_jobs


def alternatives(job: Job) -> list[str]:
    """The labels of a job whose stages are alternatives (module docstring), else []."""
    labels = job.params.get("alternatives") if isinstance(job.params, dict) else None
    return [str(label) for label in labels] if isinstance(labels, list) else []


def alternatives_summary(job: Job, steps: list[JobStep]) -> str:
    """What each stage of an alternatives job did, in order ("level 1 ipmi5 failed: ...")."""
    labels = alternatives(job)
    parts = []
    for step in sorted(steps, key=lambda s: (s.stage, s.seq)):
        label = labels[step.stage] if step.stage < len(labels) else f"stage {step.stage + 1}"
        what = f"level {step.stage + 1} {label}"
        if step.status == StepStatus.SUCCEEDED:
            parts.append(f"{what} ok")
        elif step.status in (StepStatus.FAILED, StepStatus.LOST):
            parts.append(f"{what} {step.status}: {step.error}")
        elif step.status == StepStatus.SKIPPED:
            parts.append(f"{what} not needed")
    return "; ".join(parts)


def _advance_alternatives(job: Job, steps: list[JobStep], failed_step: JobStep | None) -> None:
    open_steps = [s for s in steps if s.status not in FINISHED_STEP_STATUSES]
    if failed_step is None and any(s.status == StepStatus.SUCCEEDED for s in steps):
        # a stage succeeded (a stage of alternatives is one step): the rest is not needed
        job.steps.filter(status=StepStatus.PENDING).update(status=StepStatus.SKIPPED)
        for s in open_steps:
            if s.status == StepStatus.PENDING:
                s.status = StepStatus.SKIPPED
        _finish(job, JobStatus.SUCCEEDED, alternatives_summary(job, steps))
        return
    if not open_steps:
        _finish(job, JobStatus.FAILED, "every level failed: " + alternatives_summary(job, steps))
        return
    if any(s.status == StepStatus.DISPATCHED for s in open_steps):
        return  # the current stage is still running
    done = len(steps) - len(open_steps)
    job.progress = min(100, done * 100 // max(1, len(steps)))
    if job.status in (JobStatus.PENDING, JobStatus.DISPATCHED):
        job.status = JobStatus.RUNNING
    job.save(update_fields=["progress", "status"])
    _schedule_dispatch(job.pk)


def _advance(job: Job, failed_step: JobStep | None, steps: list[JobStep] | None = None) -> None:
    """Move a job on after a step finished: fail it, finish it or send its next stage.
    `steps`: the job's steps as just written, with `job` locked (`apply_results`); else both
    are read here."""
    if steps is None:
        job = Job.objects.select_for_update().get(pk=job.pk)
        steps = list(job.steps.all())
    if alternatives(job):
        _advance_alternatives(job, steps, failed_step)
        return
    done = sum(1 for s in steps if s.status in FINISHED_STEP_STATUSES)
    if failed_step is not None:
        host = failed_step.host.name if failed_step.host else "the console"
        job.steps.filter(status=StepStatus.PENDING).update(status=StepStatus.SKIPPED)
        _finish(job, JobStatus.FAILED, f"{failed_step.kind} on {host} failed: {failed_step.error}")
        return
    job.progress = min(100, done * 100 // max(1, len(steps)))
    if done == len(steps):
        _finish(job, JobStatus.SUCCEEDED, "")
        return
    if job.status in (JobStatus.PENDING, JobStatus.DISPATCHED):
        job.status = JobStatus.RUNNING
    job.save(update_fields=["progress", "status"])
    _schedule_dispatch(job.pk)


def _finish(job: Job, status: str, explanation: str) -> None:
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.LOST):
        return
    job.status, job.explanation, job.finished = status, explanation, timezone.now()
    if status == JobStatus.SUCCEEDED:
        job.progress = 100
    job.engine_notified = not job.action_id  # the engine hears of it at its next tick
    job.save(update_fields=["status", "explanation", "finished", "progress", "engine_notified"])
    message = f"job {status}" + (f": {explanation}" if explanation else "")
    level = JobEvent.Level.INFO if status == JobStatus.SUCCEEDED else JobEvent.Level.ERROR
    deferred = getattr(_batch, "events", None)
    if deferred is not None:  # apply_results: appended with the batch's others, one INSERT
        deferred.append(JobEvent(job=job, message=message, level=level, data={}))
        return
    add_event(job, message, level=level)


def pending_engine_results(cluster: Cluster) -> list[Job]:
    """Finished engine jobs whose outcome the engine has not been told yet."""
    return list(
        Job.objects.filter(cluster=cluster, engine_notified=False).filter(
            status__in=(JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.LOST)
        )
    )


def mark_engine_notified(job_ids: list[int]) -> None:
    Job.objects.filter(pk__in=job_ids).update(engine_notified=True)
