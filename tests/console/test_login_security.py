"""Sign-in security (issue 11): lockout per user and per address on the page and on
/api/token/, throttling, sign-ins in the event log, hashed API tokens, a read-only admin whose
user changes are logged, and a private var/."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import io
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from console.core.models import ApiToken, LoginFailure
from console.events.models import Event
from tests.console import factories as f
from tests.console.views_support import text

RIGHT, WRONG = "right-pw-7731", "wrong-pw-0042"
LOCKED = "sign-in is locked"


@pytest.fixture
def alice(db: None) -> User:
    cache.clear()  # the token throttle counts per address in the cache
    user = User.objects.create_user("alice", password=RIGHT)
    user.groups.add(Group.objects.get_or_create(name="viewer")[0])
    return user


def page_login(client: Client, username: str, password: str, address: str = "10.9.0.1") -> Any:
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=address)


def token_login(username: str, password: str, address: str = "10.9.0.1") -> Any:
    return APIClient().post(
        "/api/token/", {"username": username, "password": password}, REMOTE_ADDR=address
    )


def test_page_locks_the_user_after_10_failures_even_for_the_right_password(alice: User) -> None:
    client = Client()
    for _ in range(9):
        assert "correct username and password" in text(page_login(client, "alice", WRONG))
    assert page_login(Client(), "alice", RIGHT).status_code == 302  # 9 failures: not yet
    for _ in range(10):
        page_login(client, "alice", WRONG, address="10.9.0.2")
    refused = page_login(Client(), "alice", RIGHT, address="10.9.0.3")
    assert refused.status_code == 200 and LOCKED in text(refused)
    assert "15 more minutes" in text(refused)
    assert "_auth_user_id" not in refused.wsgi_request.session
    # once the lockout is over, the right password works again
    LoginFailure.objects.update(time=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    assert page_login(Client(), "alice", RIGHT, address="10.9.0.3").status_code == 302


def test_admin_sign_in_is_locked_too(alice: User) -> None:
    User.objects.create_superuser("root", password=RIGHT)
    for _ in range(10):
        Client().post(
            "/admin/login/", {"username": "root", "password": WRONG}, REMOTE_ADDR="10.9.1.1"
        )
    refused = Client().post(
        "/admin/login/", {"username": "root", "password": RIGHT}, REMOTE_ADDR="10.9.1.2"
    )
    assert refused.status_code == 200 and LOCKED in text(refused)
    assert Event.objects.filter(verb="login", data__via="admin", result="failed").count() == 10


def test_page_locks_an_address_that_tries_many_users(alice: User) -> None:
    for i in range(10):
        page_login(Client(), f"guess{i}", WRONG, address="10.9.0.66")
    assert LOCKED in text(page_login(Client(), "alice", RIGHT, address="10.9.0.66"))
    assert page_login(Client(), "alice", RIGHT, address="10.9.0.67").status_code == 302


def test_sign_ins_are_in_the_event_log_without_passwords(alice: User) -> None:
    page_login(Client(), "alice", WRONG, address="10.9.0.5")
    page_login(Client(), "alice", RIGHT, address="10.9.0.5")
    token_login("alice", WRONG, address="10.9.0.6")
    token_login("alice", RIGHT, address="10.9.0.6")
    events = list(Event.objects.filter(verb="login").order_by("id"))
    assert [(e.actor, e.result, e.data["via"], e.data["address"]) for e in events] == [
        ("alice", "failed", "page", "10.9.0.5"),
        ("alice", "ok", "page", "10.9.0.5"),
        ("alice", "failed", "api", "10.9.0.6"),
        ("alice", "ok", "api", "10.9.0.6"),
    ]
    dump = repr([(e.message, e.data, e.object_name) for e in Event.objects.all()])
    assert RIGHT not in dump and WRONG not in dump


def test_token_endpoint_locks_out_and_says_so(alice: User) -> None:
    for _ in range(10):
        response = token_login("alice", WRONG)
        assert response.status_code == 400
        assert "Unable to log in" in str(response.json()["non_field_errors"])
    locked = token_login("alice", RIGHT, address="10.9.0.99")
    assert locked.status_code == 429 and LOCKED in locked.json()["detail"]
    assert not ApiToken.objects.exists()
    assert Event.objects.filter(verb="login", result="refused", actor="alice").exists()


def test_token_endpoint_is_throttled(alice: User, settings: Any) -> None:
    settings.HAVEN_LOGIN_RATE = "3/min"
    answers = [token_login("nobody", WRONG, address="10.9.0.7").status_code for _ in range(5)]
    assert answers == [400, 400, 400, 429, 429]


def test_tokens_are_stored_hashed_and_shown_once(alice: User) -> None:
    first = token_login("alice", RIGHT).json()["token"]
    second = token_login("alice", RIGHT).json()["token"]
    assert first != second  # each sign-in makes a token; none can be shown again
    digests = set(ApiToken.objects.values_list("digest", flat=True))
    assert digests == {hashlib.sha256(t.encode()).hexdigest() for t in (first, second)}
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM core_apitoken")
        assert first not in repr(cursor.fetchall())
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {first}")
    assert api.get("/api/clusters/").status_code == 200
    api.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.objects.first().digest}")  # type: ignore[union-attr]
    assert api.get("/api/clusters/").status_code == 401


def test_drf_create_token_prints_a_working_token(alice: User) -> None:
    out = io.StringIO()
    call_command("drf_create_token", "alice", stdout=out)
    key = out.getvalue().split()[2]
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/clusters/").status_code == 200
    call_command("drf_create_token", "alice", "--reset", stdout=io.StringIO())
    assert api.get("/api/clusters/").status_code == 401
    assert ApiToken.objects.filter(user=alice).count() == 1


def test_plaintext_tokens_of_older_consoles_are_hashed_and_dropped(alice: User) -> None:
    from django.apps import apps

    migration = importlib.import_module("console.core.migrations.0002_api_tokens_login_failures")
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, user_id integer)"
        )
        cursor.execute("INSERT INTO authtoken_token VALUES (%s, %s)", ["a" * 40, alice.pk])

    class Editor:
        def __init__(self) -> None:
            self.connection = connection

        def execute(self, sql: str) -> None:
            with connection.cursor() as cursor:
                cursor.execute(sql)

    migration.hash_plain_tokens(apps, Editor())
    assert "authtoken_token" not in connection.introspection.table_names()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {'a' * 40}")
    assert api.get("/api/clusters/").status_code == 200


def test_admin_is_read_only_for_haven_objects_and_logs_user_changes(db: None) -> None:
    root = User.objects.create_superuser("root", password=RIGHT)
    cluster = f.ClusterFactory(name="et")
    client = Client()
    client.force_login(root)
    assert client.get(f"/admin/clusters/cluster/{cluster.pk}/change/").status_code == 200
    assert client.get("/admin/clusters/cluster/add/").status_code == 403
    changed = client.post(
        f"/admin/clusters/cluster/{cluster.pk}/change/", {"name": "renamed", "description": ""}
    )
    assert changed.status_code == 403
    assert (
        client.post(f"/admin/clusters/cluster/{cluster.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    cluster.refresh_from_db()
    assert cluster.name == "et"
    bob = User.objects.create_user("bob", password=RIGHT)
    response = client.post(
        f"/admin/auth/user/{bob.pk}/change/",
        {
            "username": "bob",
            "first_name": "Bob",
            "last_name": "",
            "email": "",
            "is_active": "on",
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
        },
    )
    assert response.status_code == 302, text(response)
    event = Event.objects.get(verb="update", object_type="user")
    assert event.actor == "root" and event.object_name == "bob"
    assert "First name" in event.message


def test_var_is_private(tmp_path: Path) -> None:
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    env = {**os.environ, "HAVEN_VAR_DIR": str(var), "DJANGO_SETTINGS_MODULE": "console.settings"}
    env.pop("HAVEN_SECRET_KEY", None)
    env.pop("DATABASE_URL", None)
    code = (
        "import django; django.setup(); from django.db import connection; "
        "connection.ensure_connection(); connection.cursor().execute('CREATE TABLE t (x int)')"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=Path(__file__).parents[2])
    assert stat.S_IMODE(var.stat().st_mode) == 0o700
    for name in ("secret_key", "haven.sqlite3"):
        assert stat.S_IMODE((var / name).stat().st_mode) == 0o600, name
