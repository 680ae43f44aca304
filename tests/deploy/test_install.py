"""deploy/install into a scratch root (``--root``: nothing is started, / is untouched):
secrets at rest 0600 and kept across runs, Redis with a password and its append-only file, a
certificate generated for the name, the units under gunicorn accepted by systemd-analyze,
``manage.py check --deploy`` clean, and the console really serving HTTPS with HSTS and secure
cookies from the files the installer wrote. On PostgreSQL (``--database-url``, a database of
the test's own: ``HAVEN_INSTALL_TEST_DB``, default haven_install_test, made by
deploy/start-postgres and dropped afterwards): the setting kept, the schema migrated there, the
console's processes on it."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAME = "haven.test"


def _install(root: Path, *extra: str) -> str:
    done = subprocess.run(
        [str(ROOT / "deploy" / "install"), "--name", NAME, "--root", str(root), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        # as an admin's shell runs it: not with the variable the browser tests set in this
        # process (manage.py check --deploy rightly refuses it)
        env={k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout + done.stderr


def _env(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if "=" in line and line[0] != "#"
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    if os.geteuid() != 0:
        pytest.skip("deploy/install runs deploy/setup (root)")
    root = tmp_path_factory.mktemp("install-root")
    return root, _install(root)


def test_secrets_at_rest_and_redis_with_a_password_and_its_aof(installed: tuple[Path, str]) -> None:
    root, out = installed
    etc = root / "etc" / "haven"
    for path in (etc / "haven.env", etc / "redis.conf", etc / "tls" / "console.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    env = _env(etc / "haven.env")
    assert env["HAVEN_TLS"] == "1" and env["HAVEN_DEBUG"] == "0"
    assert env["HAVEN_ALLOWED_HOSTS"] == NAME and len(env["HAVEN_SECRET_KEY"]) == 80
    conf = (etc / "redis.conf").read_text().splitlines()
    password = next(line.split()[1] for line in conf if line.startswith("requirepass "))
    assert len(password) == 48 and env["REDIS_URL"] == f"redis://:{password}@127.0.0.1:6379/0"
    assert "appendonly yes" in conf and "appendfsync everysec" in conf
    assert password not in out and env["HAVEN_SECRET_KEY"] not in out  # never printed
    subject = subprocess.run(
        [
            "openssl",
            "x509",
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName",
            "-in",
            str(etc / "tls" / "console.crt"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"CN = {NAME}" in subject and f"DNS:{NAME}" in subject
    assert "System check identified no issues" in out  # manage.py check --deploy


def test_units_run_gunicorn_and_systemd_accepts_them(installed: tuple[Path, str]) -> None:
    root, _ = installed
    units = root / "etc" / "systemd" / "system"
    web = (units / "haven-web.service").read_text()
    assert f"ExecStart={ROOT}/.venv/bin/gunicorn console.wsgi:application --bind 0.0.0.0:443" in web
    assert "--certfile /etc/haven/tls/console.crt" in web and "runserver" not in web
    redis = (units / "haven-redis.service").read_text()
    assert "ExecStart=/usr/bin/redis-server /etc/haven/redis.conf" in redis
    for unit in units.glob("haven-*.service"):
        assert "Restart=always" in unit.read_text(), unit.name
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    names = ["haven-worker@1.service"] + [p.name for p in units.iterdir() if "@" not in p.name]
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *names],
        cwd=units,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_a_second_run_keeps_the_secrets_and_the_certificate(installed: tuple[Path, str]) -> None:
    root, _ = installed
    etc = root / "etc" / "haven"
    before = [(etc / f).read_bytes() for f in ("haven.env", "redis.conf", "tls/console.crt")]
    _install(root)
    after = [(etc / f).read_bytes() for f in ("haven.env", "redis.conf", "tls/console.crt")]
    assert after == before


def test_the_console_serves_https_with_hsts_and_secure_cookies(installed: tuple[Path, str]) -> None:
    root, _ = installed
    etc = root / "etc" / "haven"
    env = {**os.environ, **_env(etc / "haven.env")}
    env["HAVEN_VAR_DIR"] = str(root / "var" / "lib" / "haven")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "gunicorn"),
            "console.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--certfile",
            str(etc / "tls" / "console.crt"),
            "--keyfile",
            str(etc / "tls" / "console.key"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        context = ssl.create_default_context(cafile=str(etc / "tls" / "console.crt"))
        context.check_hostname = False  # the name is not this machine's; the cert is pinned
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
                conn.request("GET", "/login/", headers={"Host": NAME})
                response = conn.getresponse()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.5)
        assert response.status == 200
        assert response.getheader("Strict-Transport-Security") == (
            "max-age=31536000; includeSubDomains; preload"
        )
        cookies = response.headers.get_all("Set-Cookie") or []
        assert cookies and all("Secure" in c for c in cookies), cookies
        conn.close()
        plain = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
        plain.request("GET", "/login/", headers={"Host": "evil.example"})
        assert plain.getresponse().status == 400  # ALLOWED_HOSTS holds only the name
    finally:
        proc.terminate()
        proc.wait(10)
    assert sys.executable  # the test ran under the project's Python


def _pg(*sql_and_db: str) -> str:
    *sql, db = sql_and_db
    done = subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            "psql",
            "-qtA",
            "-d",
            db,
            *[a for q in sql for a in ("-c", q)],
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_postgresql_by_one_setting(tmp_path_factory: pytest.TempPathFactory) -> None:
    if os.geteuid() != 0:
        pytest.skip("deploy/install runs deploy/setup (root)")
    if not Path("/usr/lib/postgresql").is_dir():
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    db = os.environ.get("HAVEN_INSTALL_TEST_DB", "haven_install_test")
    assert db != "haven_ci", "deploy/test's database is not this test's"
    was_up = subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"], check=False).returncode == 0
    start = [str(ROOT / "deploy" / "start-postgres"), db]
    url = subprocess.run(start, capture_output=True, text=True, check=True).stdout.split()[-1]
    _pg(f"DROP DATABASE IF EXISTS {db}", "postgres")  # from nothing: every migration runs
    url = subprocess.run(start, capture_output=True, text=True, check=True).stdout.split()[-1]
    root = tmp_path_factory.mktemp("install-pg")
    try:
        out = _install(root, "--database-url", url)
        etc = root / "etc" / "haven"
        env = _env(etc / "haven.env")
        assert env["DATABASE_URL"] == url
        assert stat.S_IMODE((etc / "haven.env").stat().st_mode) == 0o600
        password = url.split(":")[2].split("@")[0]
        assert password not in out  # never printed
        assert "System check identified no issues" in out
        applied = _pg("SELECT app || '.' || name FROM django_migrations", db).split()
        assert "clusters.0006_migration_tls" in applied and "auth.0001_initial" in applied
        assert not (root / "var" / "lib" / "haven" / "haven.sqlite3").exists()  # not SQLite
        again = _install(root)  # a second run without the option keeps the database
        assert _env(etc / "haven.env")["DATABASE_URL"] == url and password not in again
        # the console's processes read haven.env: on PostgreSQL, and they write there
        probe = (
            "from django.db import connection; from console.clusters.models import Cluster; "
            "Cluster.objects.create(name='pg-probe'); print(connection.vendor)"
        )
        proc_env = {**os.environ, **_env(etc / "haven.env")}
        proc_env["HAVEN_VAR_DIR"] = str(root / "var" / "lib" / "haven")
        proc_env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        vendor = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "python"), "manage.py", "shell", "-c", probe],
            cwd=ROOT,
            env=proc_env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert vendor[-1] == "postgresql"
        assert _pg("SELECT name FROM clusters_cluster", db).split() == ["pg-probe"]
        bad = subprocess.run(
            [
                str(ROOT / "deploy" / "install"),
                "--name",
                NAME,
                "--root",
                str(root),
                "--database-url",
                "mysql://x@y/z",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert bad.returncode == 2 and "--database-url must look like" in bad.stderr
    finally:
        _pg(f"DROP DATABASE IF EXISTS {db}", "postgres")
        if not was_up:
            version = sorted(os.listdir("/usr/lib/postgresql"), key=int)[-1]
            subprocess.run(["pg_ctlcluster", version, "main", "stop"], check=False)
