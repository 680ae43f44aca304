"""The SSH bootstrap against real lab hosts (namespaces with their own sshd and libvirtd).

A real console (Celery worker + beat on the test database) and a Redis on the lab bridge;
the console's own bootstrap connects with each host's root password and pinned host key,
installs the agent from the wheelhouse without internet, gives it a Redis user of its own,
starts it and waits for its heartbeat. Failures end their step with the exact reason.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from console.bootstrap import ssh as bootstrap
from console.bootstrap.ssh import BootstrapError, HostSpec
from console.clusters.models import Host
from console.jobs.models import Job, JobEvent, JobStatus, StepStatus
from tests.lab import harness
from tests.lab.harness import HOSTS, haven_lab

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def lab() -> Iterator[haven_lab.Lab]:
    lab = harness.fresh_lab()
    yield lab
    lab.destroy()


@pytest.fixture(scope="module")
def lab_redis(lab: haven_lab.Lab) -> Iterator[harness.LabRedis]:
    r = harness.LabRedis(lab.root)
    r.start()
    yield r
    r.stop()


@pytest.fixture
def console(
    lab_redis: harness.LabRedis, settings: Any, tmp_path: Path
) -> Iterator[harness.Console]:
    redis.Redis.from_url(lab_redis.url).flushdb()
    settings.REDIS_URL = settings.CELERY_BROKER_URL = lab_redis.url
    settings.HAVEN_AGENT_BROKER_URL = lab_redis.agent_url
    settings.HAVEN_WAKE_ON_COMMAND = True
    from console.celery import app, use_broker

    previous = app.conf.broker_url
    use_broker(lab_redis.url)
    console = harness.Console(lab_redis.url, harness.db_url(settings), tmp_path / "console")
    console.start()
    yield console
    console.stop()
    use_broker(previous)


def _spec(lab: haven_lab.Lab, host_name: str, **override: Any) -> HostSpec:
    host = lab.host(host_name)
    values: dict[str, Any] = {
        "name": host_name,
        "address": host.address,
        "password": host.root_password,
        "fingerprint": bootstrap.scan_host_key(host.address),
    }
    values.update(override)
    return HostSpec(**values)


def _failed_connect(spec: HostSpec) -> tuple[Job, str]:
    job = bootstrap.create_bootstrap_job("lab", [spec], actor="tester")
    started = time.monotonic()
    job = bootstrap.run_bootstrap(job.pk, {spec.name: spec.password})
    assert time.monotonic() - started < 20
    assert job.status == JobStatus.FAILED
    steps = {s.kind: s for s in job.steps.all()}
    assert steps["bootstrap.connect"].status == StepStatus.FAILED
    assert {steps[k].status for k in bootstrap.STEP_KINDS[1:]} == {StepStatus.SKIPPED}
    return job, steps["bootstrap.connect"].error


def test_scan_host_key_matches_the_hosts_key_as_openssh_prints_it(lab: haven_lab.Lab) -> None:
    host = lab.host("et-virt05")
    out = haven_lab._run(["ssh-keygen", "-l", "-f", str(host.ssh_host_key_path)])
    assert bootstrap.scan_host_key(host.address) == out.split()[1]
    with pytest.raises(BootstrapError, match=r"^host unreachable: 10\.88\.0\.99:22: "):
        bootstrap.scan_host_key("10.88.0.99", timeout=1)
    with pytest.raises(BootstrapError, match="not a valid host address"):
        bootstrap.scan_host_key("10.88.0.5; reboot")


def test_wrong_password_fails_connect_with_the_exact_reason(lab: haven_lab.Lab) -> None:
    job, error = _failed_connect(_spec(lab, "et-virt06", password="not-the-password"))
    assert error == "wrong root password for et-virt06"
    assert "connect on et-virt06 failed: wrong root password for et-virt06" in job.explanation


def test_wrong_pinned_fingerprint_fails_connect(lab: haven_lab.Lab) -> None:
    real = bootstrap.scan_host_key(lab.host("et-virt06").address)
    wrong = "SHA256:" + "A" * 43
    _, error = _failed_connect(_spec(lab, "et-virt06", fingerprint=wrong))
    assert error == f"host key mismatch for et-virt06: expected {wrong}, got {real}"


def test_unreachable_address_fails_connect(lab: haven_lab.Lab) -> None:
    spec = HostSpec("et-virt99", "10.88.0.99", "pw", "SHA256:" + "B" * 43)
    _, error = _failed_connect(spec)
    assert error.startswith("et-virt99 unreachable: "), error


def test_bad_names_are_refused_before_anything_runs(lab: haven_lab.Lab) -> None:
    good = _spec(lab, "et-virt05")
    with pytest.raises(BootstrapError, match="not a valid cluster name"):
        bootstrap.start_bootstrap("lab; rm -rf /", [good], actor="tester")
    with pytest.raises(BootstrapError, match="not a valid host name"):
        bootstrap.start_bootstrap("lab", [_spec(lab, "et-virt05", name="x y")], actor="tester")
    with pytest.raises(BootstrapError, match="not a valid host address"):
        bootstrap.start_bootstrap(
            "lab", [_spec(lab, "et-virt05", address="$(reboot)")], actor="tester"
        )
    assert not Job.objects.exists() and not Host.objects.exists()


def test_missing_libvirt_fails_install_with_the_exact_reason(lab: haven_lab.Lab) -> None:
    empty = lab.root / "empty"
    empty.mkdir(exist_ok=True)
    # Hide libvirtd (and every other sbin program) from this one host's mount namespace.
    lab.run_in("et-virt07", ["mount", "--bind", str(empty), "/usr/sbin"], check=True)
    try:
        spec = _spec(lab, "et-virt07")
        job = bootstrap.create_bootstrap_job("lab", [spec], actor="tester")
        job = bootstrap.run_bootstrap(job.pk, {spec.name: spec.password})
    finally:
        lab.run_in("et-virt07", ["umount", "/usr/bin/../sbin"], check=True)
    steps = {s.kind: s for s in job.steps.all()}
    assert steps["bootstrap.connect"].status == StepStatus.SUCCEEDED
    assert steps["bootstrap.install"].status == StepStatus.FAILED
    assert steps["bootstrap.install"].error == (
        "libvirt is not installed on et-virt07: apt-get install libvirt-daemon-system"
    )


def test_bootstrap_three_hosts_agents_heartbeat_and_no_secret_leaks(
    lab: haven_lab.Lab,
    lab_redis: harness.LabRedis,
    console: harness.Console,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    specs = [_spec(lab, name) for name in HOSTS]
    job = bootstrap.start_bootstrap("lab", specs, actor="tester")  # runs in a thread
    job = harness.wait(
        "the bootstrap job to end",
        lambda: Job.objects.filter(pk=job.pk, status__in=["succeeded", "failed", "lost"]).first(),
        timeout=150,
        interval=0.3,
    )
    events = [e.message for e in JobEvent.objects.filter(job=job).order_by("seq")]
    assert job.status == JobStatus.SUCCEEDED, (job.explanation, events, console.log_text())
    steps = list(job.steps.order_by("seq"))
    assert [s.kind for s in steps] == [k for _ in HOSTS for k in bootstrap.STEP_KINDS]
    assert all(s.status == StepStatus.SUCCEEDED for s in steps)
    for name in HOSTS:
        for kind in bootstrap.STEP_KINDS:
            assert f"{kind} on {name}: started" in events
            assert f"{kind} on {name}: done" in events
    register = {s.host.name: s.result for s in steps if s.kind == "bootstrap.register"}
    assert {r["host_uuid"] for r in register.values()} == {lab.host(n).host_uuid for n in HOSTS}
    for r in register.values():  # over TLS: certificate installed, libvirtd restarted on it
        assert r["migration"]["transport"] == "tls" and r["migration"]["libvirtd_restarted"]
        assert r["migration"]["certificate"]["issuer"] == "CN=Haven cluster lab CA,O=Haven"

    # every agent heartbeats and its host is online in the console
    harness.wait(
        "all hosts online",
        lambda: set(Host.objects.filter(state="online").values_list("name", flat=True))
        == set(HOSTS),
        timeout=15,
    )
    migration_jobs = Job.objects.filter(kind="configure-migration", status=JobStatus.SUCCEEDED)
    assert migration_jobs.count() == 3
    assert Job.objects.filter(kind="tls-request", status=JobStatus.SUCCEEDED).count() == 3

    # each agent's own Redis user: its queue yes, another agent's queue or the console's no
    secrets = []
    for name in HOSTS:
        env = lab.host(name).dir / "etc" / "haven" / f"agent-{name}.env"
        assert stat.S_IMODE(env.stat().st_mode) == 0o600
        url = next(
            line.split("=", 1)[1]
            for line in env.read_text().splitlines()
            if line.startswith("HAVEN_AGENT_BROKER=")
        )
        assert url.startswith(f"redis://haven-agent-{name}:")
        secrets.append(url.split(":")[2].split("@")[0])
        agent = redis.Redis.from_url(url.replace(haven_lab.BRIDGE_ADDRESS, "127.0.0.1"))
        agent.llen(f"agent.{name}")
        other = next(n for n in HOSTS if n != name)
        with pytest.raises(redis.exceptions.NoPermissionError):
            agent.lrange(f"agent.{other}", 0, -1)
        with pytest.raises(redis.exceptions.NoPermissionError):
            agent.lrange("console", 0, -1)
        with pytest.raises(redis.exceptions.NoPermissionError):
            agent.keys("*")
        # the password is not on the agent's command line
        ps = lab.run_in(name, ["ps", "-ww", "-eo", "args"]).stdout
        assert "-m agent --broker-file" in ps and secrets[-1] not in ps

    # no root password (nor an agent's Redis password) in the database, events, logs or broker
    from django.db import connection

    connection.close()
    db_bytes = Path(settings.DATABASES["default"]["NAME"]).read_bytes()
    texts = {
        "database": db_bytes.decode("latin-1"),
        "job events": "\n".join(str(e.data) + e.message for e in JobEvent.objects.all()),
        "step data": "\n".join(str(s.args) + str(s.result) + s.error for s in steps),
        "console logs": console.log_text(),
        "agent logs": harness.agent_logs(),
        "test log": caplog.text,
        "the broker": _broker_text(lab_redis.url),
    }
    assert texts["agent logs"].count("agent@") >= 3  # the agents did log
    for where, text in texts.items():
        for spec in specs:
            assert spec.password not in text, f"{spec.name}'s root password in {where}"
        for secret in secrets:
            assert secret not in text, f"an agent's Redis password in {where}"
    assert os.environ.get("HAVEN_AGENT_BROKER") is None


def _broker_text(url: str) -> str:
    """Every key and value the console's Redis holds, as text (the broker at rest)."""
    r = redis.Redis.from_url(url)
    out: list[str] = []
    for key in r.scan_iter("*"):
        kind = r.type(key).decode()
        value: object
        if kind == "string":
            value = r.get(key)
        elif kind == "list":
            value = r.lrange(key, 0, -1)
        elif kind == "hash":
            value = r.hgetall(key)
        elif kind == "set":
            value = r.smembers(key)
        elif kind == "zset":
            value = r.zrange(key, 0, -1)
        else:
            value = ""
        out.append(f"{key!r} {value!r}")
    return "\n".join(out)


# --- extra agent environment (HAVEN_AGENT_ENV); no lab needed ---------------------------------

FAKE_SPEC = HostSpec("et-virt05", "10.88.0.5", "pw", "SHA256:" + "C" * 43)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"lvm_system_dir": "/x"}, "'lvm_system_dir' is not a variable name"),
        ({"1X": "/x"}, "'1X' is not a variable name"),
        ({"A-B": "/x"}, "'A-B' is not a variable name"),
        ({"A" * 65: "/x"}, "is not a variable name"),
        ({"HAVEN_AGENT_BROKER": "redis://evil"}, "HAVEN_AGENT_BROKER is reserved"),
        ({"LVM_SYSTEM_DIR": "/x\nHAVEN_AGENT_BROKER=redis://evil"}, "must be one line"),
        ({"LVM_SYSTEM_DIR": "/x\r"}, "must be one line"),
        ({"N": 5}, "the value of N must be one line of text"),
        (["LVM_SYSTEM_DIR=/x"], "must be a dict"),
    ],
)
def test_a_bad_agent_env_is_refused_before_anything_runs(
    settings: Any, env: Any, message: str
) -> None:
    settings.HAVEN_AGENT_ENV = env
    with pytest.raises(BootstrapError, match=message) as refused:
        bootstrap.start_bootstrap("lab", [FAKE_SPEC], actor="tester")
    assert "evil" not in str(refused.value)  # values are never echoed
    assert not Job.objects.exists() and not Host.objects.exists()


def test_the_supervisor_exports_the_extra_env_literally_and_never_the_broker(
    settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The env file and supervisor script the bootstrap writes, run by sh: the agent (a stand-in
    that records its environment) sees HAVEN_AGENT_ENV exactly, and not the broker URL."""
    tricky = f"$(touch {tmp_path}/expanded) `id` 'q' \"d\" \\n * ; a=b"
    settings.HAVEN_AGENT_ENV = {"LVM_SYSTEM_DIR": f"{tmp_path}/lvm conf", "TRICKY": tricky}
    monkeypatch.setattr(bootstrap, "CONFIG_DIR", str(tmp_path))
    paths = bootstrap.config_paths("et-virt05")
    broker = "redis://haven-agent-et-virt05:s3cret@10.88.0.254:6390/0"
    Path(paths["env"]).write_text(
        bootstrap.agent_env_file("et-virt05", broker, bootstrap.agent_env())
    )
    agent_dir = tmp_path / "agent"
    (agent_dir / "bin").mkdir(parents=True)
    fake_python = agent_dir / "bin" / "python"
    fake_python.write_text(f'#!/bin/sh\nenv > {tmp_path}/seen.env\nkill -KILL "$PPID"\n')
    fake_python.chmod(0o755)
    supervisor = tmp_path / "agent-et-virt05.sh"
    supervisor.write_text(bootstrap._supervisor_script("et-virt05", str(agent_dir)))
    done = subprocess.run(
        ["sh", str(supervisor)], env={"PATH": "/usr/bin:/bin"}, timeout=10, check=False
    )
    assert done.returncode == -signal.SIGKILL
    seen = dict(line.split("=", 1) for line in (tmp_path / "seen.env").read_text().splitlines())
    assert seen["LVM_SYSTEM_DIR"] == f"{tmp_path}/lvm conf"
    assert seen["TRICKY"] == tricky
    assert not (tmp_path / "expanded").exists()
    assert not any(k.startswith("HAVEN_AGENT_") for k in seen)
    assert "s3cret" not in (tmp_path / "seen.env").read_text()
    # the agent still finds its broker in the same file
    from agent.__main__ import _broker_from_file

    assert _broker_from_file(paths["env"]) == broker


def test_no_agent_env_writes_the_env_file_as_before(settings: Any) -> None:
    settings.HAVEN_AGENT_ENV = {}
    assert bootstrap.agent_env_file("h1", "redis://u:p@x/0", bootstrap.agent_env()) == (
        "# Haven agent configuration, written by the console's SSH bootstrap (secret: 0600).\n"
        "HAVEN_AGENT_HOST=h1\n"
        "HAVEN_AGENT_LIBVIRT_URI=qemu:///system\n"
        "HAVEN_AGENT_BROKER=redis://u:p@x/0\n"
    )
