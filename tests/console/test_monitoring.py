"""Metrics, alerts and incidents: /metrics parsed by the Prometheus client's own parser, alert
hooks delivered to a real HTTP receiver, incidents built from the engine's typed events."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core import mail
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from console.core.models import ApiToken
from console.events.incidents import incidents
from console.events.models import Event
from console.events.services import record
from console.ha.store import Store
from console.monitoring import services as alerts
from console.monitoring.models import AlertHook
from tests.console import factories as f
from tests.console.test_runtime import run
from tests.console.views_support import login, text


class Receiver:
    """A real webhook endpoint on loopback that keeps every body it gets."""

    def __init__(self) -> None:
        self.bodies: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                outer.bodies.append((dict(self.headers), json.loads(raw)))
                outer.raw = raw
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.raw = b""
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def viewer_token() -> str:
    user = User.objects.create_user("scraper", password="pw-for-tests-only")
    user.groups.add(Group.objects.get_or_create(name="viewer")[0])
    return ApiToken.issue(user)[1]


def families(body: bytes) -> dict[str, Any]:
    return {fam.name: fam for fam in text_string_to_metric_families(body.decode())}


def value(fams: dict[str, Any], name: str, **labels: str) -> float:
    for fam in fams.values():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {name} {labels}")


# --- /metrics --------------------------------------------------------------------------------
def test_metrics_need_a_reader_or_an_allowed_address(db: None, settings: Any) -> None:
    assert APIClient().get("/metrics").status_code == 401
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert bad.get("/metrics").status_code == 401
    settings.HAVEN_METRICS_ALLOW = "10.0.0.0/8"  # the test client is 127.0.0.1
    assert APIClient().get("/metrics").status_code == 401
    settings.HAVEN_METRICS_ALLOW = "127.0.0.0/8"
    assert APIClient().get("/metrics").status_code == 200
    assert APIClient().post("/metrics").status_code == 405


def test_metrics_parse_and_count_what_the_database_holds(db: None) -> None:
    cluster = f.ClusterFactory(name="et")
    h1 = f.HostFactory(cluster=cluster, name="et-virt05", state="online")
    f.HostFactory(cluster=cluster, name="et-virt06", state="fenced")
    f.VmServiceFactory(cluster=cluster, name="guest1", state="started", host=h1)
    f.VmServiceFactory(cluster=cluster, name="guest2", state="fence")
    f.JobFactory(cluster=cluster, kind="fence", status="succeeded")
    f.JobFactory(cluster=cluster, kind="fence", status="failed")
    f.JobFactory(cluster=cluster, kind="fence", status="failed")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {viewer_token()}")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    fams = families(response.content)
    assert value(fams, "haven_hosts", cluster="et", state="online") == 1
    assert value(fams, "haven_hosts", cluster="et", state="fenced") == 1
    assert value(fams, "haven_hosts", cluster="et", state="unreachable") == 0
    assert value(fams, "haven_services", cluster="et", state="started") == 1
    assert value(fams, "haven_services", cluster="et", state="fence") == 1
    assert value(fams, "haven_fence_attempts", cluster="et", result="failed") == 2
    assert value(fams, "haven_fence_attempts", cluster="et", result="succeeded") == 1
    assert value(fams, "haven_alarm", cluster="et") == 0


# --- incidents from typed events ----------------------------------------------------------------
def engine_event(cluster: Any, seconds: float, base: dt.datetime, **kw: Any) -> Event:
    event = record(actor="engine", cluster=cluster, result="info", **kw)
    Event.objects.filter(pk=event.pk).update(time=base + dt.timedelta(seconds=seconds))
    return event


def state(kind: str, name: str, old: str, new: str, **data: Any) -> dict[str, Any]:
    return {
        "verb": f"{kind}-state",
        "object_type": kind,
        "object_name": name,
        # the prose no longer names the host: the typed data must be enough
        "message": f"{old} -> {new}: something happened",
        "data": {"kind": kind, "old": old, "new": new, "reason": "r", **data},
    }


def test_a_host_failure_lists_every_guest_that_moved_with_its_times(db: None) -> None:
    cluster = f.ClusterFactory(name="et")
    fence_job = f.JobFactory(cluster=cluster, kind="fence", status="succeeded")
    base = timezone.now() - dt.timedelta(minutes=5)
    timeline = [
        (0.0, state("host", "h1", "online", "unreachable", host="h1")),
        (0.0, state("service", "g1", "started", "fence", host="h1", suspects=["h1"])),
        (0.0, state("service", "g2", "started", "fence", host="h1", suspects=["h1"])),
        (0.1, state("host", "h1", "unreachable", "fencing", host="h1")),
        (
            0.1,
            {
                "verb": "fence",
                "object_type": "action",
                "object_name": "c1-1",
                "message": "fence h1",
                "data": {"job": fence_job.pk, "host": "h1", "device": "ipmi1", "runner": "h2"},
            },
        ),
        (2.5, state("host", "h1", "fencing", "fenced", host="h1")),
        (2.5, state("service", "g1", "fence", "recovering", host="h1")),
        (2.5, state("service", "g2", "fence", "recovering", host="h1")),
        (
            2.6,
            {
                "verb": "start",
                "object_type": "action",
                "object_name": "c1-2",
                "message": "start g1 on h2",
                "data": {"service": "g1", "host": "h2"},
            },
        ),
        (
            2.6,
            {
                "verb": "start",
                "object_type": "action",
                "object_name": "c1-3",
                "message": "start g2 on h3",
                "data": {"service": "g2", "host": "h3"},
            },
        ),
        (3.1, state("service", "g1", "starting", "started", host="h2")),
        (4.0, state("service", "g2", "starting", "started", host="h3")),
    ]
    for seconds, kw in timeline:
        engine_event(cluster, seconds, base, **kw)
    [incident] = incidents(Event.objects.all())
    assert (incident.kind, incident.subject) == ("host", "h1")
    assert incident.fenced_at is not None
    assert any("ipmi1 via h2: succeeded" in line for line in incident.fence)
    moved = {g.name: (g.host, g.took_s) for g in incident.guests}
    assert moved == {"g1": ("h2", pytest.approx(3.1)), "g2": ("h3", pytest.approx(4.0))}
    g1 = next(g for g in incident.guests if g.name == "g1")
    assert [s.label for s in g1.steps] == ["fence wait", "start"]
    assert g1.steps[0].seconds == pytest.approx(2.5)
    assert incident.rto_s == pytest.approx(4.0)
    page = text(login("viewer").get("/events/incidents/"))
    assert "h1 failed" in page and "recovered in 4.0 s" in page
    assert "No guest had to move" not in page
    assert page.count('class="guest"') == 2 and "<svg" in page


def test_a_guest_crash_makes_its_own_incident(db: None) -> None:
    cluster = f.ClusterFactory(name="et")
    base = timezone.now() - dt.timedelta(minutes=1)
    engine_event(cluster, 0, base, **state("service", "g1", "started", "recovering", host="h1"))
    engine_event(
        cluster,
        0.05,
        base,
        verb="start",
        object_type="action",
        object_name="c1-9",
        message="start g1 on h1",
        data={"service": "g1", "host": "h1"},
    )
    engine_event(cluster, 0.4, base, **state("service", "g1", "starting", "started", host="h1"))
    [incident] = incidents(Event.objects.all())
    assert (incident.kind, incident.subject) == ("guest", "g1")
    assert incident.ended is not None and incident.rto_s == pytest.approx(0.4)
    assert [g.host for g in incident.guests] == ["h1"]


@pytest.mark.django_db(transaction=True)
def test_a_real_power_loss_through_the_runtime_reads_as_an_incident(
    cluster3: Any,
    store: Store,
) -> None:
    cluster, agents = cluster3
    t = run(cluster, agents, store, 1000.0, 1005.0)
    agents.power_off("et-virt05")  # power loss: silent, guests gone
    run(cluster, agents, store, t, t + 10)
    unreachable = Event.objects.get(verb="host-state", data__new="unreachable")
    assert unreachable.severity == "critical" and unreachable.data["host"] == "et-virt05"
    [incident] = incidents(Event.objects.all())
    assert incident.subject == "et-virt05" and incident.fenced_at is not None
    [g] = incident.guests
    assert g.name == "guest1" and g.host in ("et-virt06", "et-virt07")
    assert g.took_s is not None and [s.label for s in g.steps] == ["fence wait", "start"]
    # no shared storage: no dlm to tell, no such row
    assert [m.what for m in incident.milestones] == ["noticed", "fence", "confirmed off"]


@pytest.mark.django_db(transaction=True)
def test_the_dlm_acknowledgement_of_the_fence_is_a_row_of_the_incident(
    cluster3: Any,
    store: Store,
) -> None:
    """Shared storage: once the fence succeeded the survivors' dlm is told (``dlm_tool
    fence_ack``, the ``dlm-fence-ack`` job); the incident lists it with its time, after the
    fence attempt (the engine may confirm the host off before or after it), and its timeline
    strip has a row for it."""
    from console.jobs.models import Job

    cluster, agents = cluster3
    f.VolumeGroupFactory(cluster=cluster, name="vg_shared", clustered=True)
    t = run(cluster, agents, store, 1000.0, 1005.0)
    agents.power_off("et-virt05")
    run(cluster, agents, store, t, t + 10)
    ack = Job.objects.get(kind="dlm-fence-ack")
    assert ack.status == "succeeded" and ack.params["host"] == "et-virt05", ack.explanation
    assert sorted(ack.params["survivors"]) == ["et-virt06", "et-virt07"]
    [incident] = incidents(Event.objects.all())
    rows = [(m.what, m.at) for m in incident.milestones]
    whats = [w for w, _ in rows]
    assert whats[0] == "noticed" and "dlm" in whats
    fence = Job.objects.get(kind="fence")
    assert fence.finished is not None and ack.created >= fence.finished
    assert whats.index("fence") < whats.index("dlm") and "confirmed off" in whats
    dlm = incident.milestones[whats.index("dlm")]
    assert dlm.at == ack.finished and dlm.job == ack.pk
    assert dlm.detail == "dlm on et-virt06, et-virt07 acknowledged the fence"
    assert (incident.dlm_started, incident.dlm_done) == (ack.created, ack.finished)
    [strip] = [r for r in incident.timeline(timezone.now()) if r["guest"] == "dlm"]
    assert [b["label"] for b in strip["bars"]] == ["dlm ack"] and not strip["bars"][0]["open"]
    page = login("viewer").get("/events/incidents/").content.decode()
    local = timezone.localtime(ack.finished)
    assert (
        f'<tr class="milestone" data-what="dlm"><td>{local:%H:%M:%S}</td><td>dlm</td>'
        "<td>dlm on et-virt06, et-virt07 acknowledged the fence</td></tr>"
    ) in page
    assert 'class="bar dlm-ack"' in page
    # still running: the row says so, with no time yet
    Job.objects.filter(pk=ack.pk).update(status="running", finished=None)
    [incident] = incidents(Event.objects.all())
    dlm = next(m for m in incident.milestones if m.what == "dlm")
    assert dlm.at is None and "running" in dlm.detail and incident.milestones[-1] == dlm


@pytest.mark.django_db(transaction=True)
def test_runner_ticks_show_in_metrics(cluster3: Any, store: Store, settings: Any) -> None:
    cluster, agents = cluster3
    run(cluster, agents, store, 1000.0, 1003.0)  # ticks at virtual times, each recorded
    settings.HAVEN_METRICS_ALLOW = "127.0.0.1"
    from console.ha import tasks

    previous, tasks._store = tasks._store, store
    try:
        fams = families(APIClient().get("/metrics").content)
    finally:
        tasks._store = previous
    assert value(fams, "haven_runner_tick_seconds", cluster=cluster.name, quantile="0.5") > 0
    assert value(fams, "haven_broker_up") == 1
    assert value(fams, "haven_heartbeat_age_seconds", host="et-virt05") >= 0


# --- alert hooks ----------------------------------------------------------------------------
def test_an_incident_reaches_a_signed_webhook(
    db: None, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    cluster = f.ClusterFactory(name="et")
    hook = AlertHook(name="ops", url=receiver.url, topics=["incident"])
    alerts.set_signing_key(hook, "s3cret-key")
    hook.save()
    sent: list[int] = []
    with (
        alerts.use_dispatcher(lambda event_id, only: sent.append(event_id)),
        django_capture_on_commit_callbacks(execute=True),
    ):
        record(actor="engine", verb="job", cluster=cluster, message="routine")  # no alert
        event = record(
            actor="engine",
            cluster=cluster,
            result="info",
            **state("host", "h1", "online", "unreachable", host="h1"),
        )
    for _ in range(100):  # dispatched after the commit, off the committing thread
        if sent:
            break
        time.sleep(0.02)
    assert sent == [event.pk]  # classified once
    assert alerts.deliver(event.pk) == {"ops": "HTTP 200"}
    [(headers, body)] = receiver.bodies
    assert body["topic"] == "incident" and body["cluster"] == "et"
    assert body["event"]["data"]["new"] == "unreachable"
    mac = hmac.new(b"s3cret-key", receiver.raw, hashlib.sha256).hexdigest()
    assert headers["X-Haven-Signature"] == f"sha256={mac}"
    hook.refresh_from_db()
    assert hook.last_result == "HTTP 200" and "s3cret-key" not in hook.secret


def test_topics_and_clusters_select_the_hooks(db: None, receiver: Receiver) -> None:
    et, other = f.ClusterFactory(name="et"), f.ClusterFactory(name="other")
    AlertHook.objects.create(name="storms", url=receiver.url, topics=["storm"])
    AlertHook.objects.create(name="other-only", url=receiver.url, cluster=other)
    with alerts.use_dispatcher(lambda *_: None):
        storm = record(
            actor="engine",
            verb="alarm",
            cluster=et,
            result="failed",
            data={"alarm": "storm: 2 of 3"},
        )
        fence_failed = record(
            actor="engine", cluster=et, **state("host", "h1", "fencing", "unreachable", host="h1")
        )
    assert alerts.deliver(storm.pk) == {"storms": "HTTP 200"}
    assert alerts.deliver(fence_failed.pk) == {}  # storms-only hook; the other cluster's hook
    assert [b["topic"] for _, b in receiver.bodies] == ["storm"]


def test_a_failing_webhook_is_reported_on_the_hook_not_raised(db: None, receiver: Receiver) -> None:
    receiver.status = 500
    hook = AlertHook.objects.create(name="ops", url=receiver.url)
    result = alerts.test_hook(hook, actor="admin")
    assert result == "failed: HTTP 500"
    hook.refresh_from_db()
    assert hook.last_result == "failed: HTTP 500"


def test_email_hook_and_the_api_test_button(db: None, admin_api: APIClient, settings: Any) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    created = admin_api.post(
        "/api/alert-hooks/",
        {"name": "mail", "kind": "email", "email_to": "ops@example.org", "topics": ["incident"]},
        format="json",
    )
    assert created.status_code == 201, created.content
    answer = admin_api.post(f"/api/alert-hooks/{created.json()['id']}/test/")
    assert answer.status_code == 200 and answer.json()["result"] == "mailed 1"
    [message] = mail.outbox
    assert message.to == ["ops@example.org"] and "test alert for hook mail" in message.body
    assert Event.objects.filter(verb="alert-test").count() == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "a", "kind": "webhook", "url": ""}, "url"),
        ({"name": "a", "kind": "webhook", "url": "ftp://x/"}, "url"),
        ({"name": "a", "kind": "email", "email_to": "not-an-address"}, "email_to"),
        ({"name": "a", "url": "http://127.0.0.1/", "topics": ["nope"]}, "topics"),
        ({"name": "a", "url": "http://127.0.0.1/", "topics": []}, "topics"),
    ],
)
def test_bad_hooks_are_refused_naming_the_field(
    db: None, admin_api: APIClient, body: dict[str, Any], field: str
) -> None:
    answer = admin_api.post("/api/alert-hooks/", body, format="json")
    assert answer.status_code == 400 and field in answer.json(), answer.content
    assert not AlertHook.objects.exists()


def test_viewers_see_hooks_but_cannot_change_or_test_them(
    db: None, viewer_api: APIClient, receiver: Receiver
) -> None:
    hook = AlertHook.objects.create(name="ops", url=receiver.url)
    alerts.set_signing_key(hook, "k")
    hook.save()
    listed = viewer_api.get("/api/alert-hooks/").json()["results"]
    assert listed[0]["signed"] is True and "signing_key" not in listed[0]
    assert viewer_api.post(f"/api/alert-hooks/{hook.pk}/test/").status_code == 403
    assert viewer_api.delete(f"/api/alert-hooks/{hook.pk}/").status_code == 403
    assert receiver.bodies == []
    page = text(login("viewer").get("/alerts/"))
    assert "ops" in page and "Test</button>" not in page


def test_the_alerts_page_test_button(db: None, receiver: Receiver) -> None:
    hook = AlertHook.objects.create(name="ops", url=receiver.url)
    client = login("admin")
    response = client.post(f"/alerts/{hook.pk}/test/", follow=True)
    assert "Test alert to ops: HTTP 200" in text(response)
    assert [b["topic"] for _, b in receiver.bodies] == ["test"]


def test_no_hook_no_dispatch(db: None, django_capture_on_commit_callbacks: Any) -> None:
    """Without an enabled hook an alarm costs the runner no broker round trip."""
    sent: list[int] = []
    AlertHook.objects.create(name="off", url="http://127.0.0.1:9/", enabled=False)
    with (
        alerts.use_dispatcher(lambda event_id, only: sent.append(event_id)),
        django_capture_on_commit_callbacks(execute=True) as callbacks,
    ):
        record(actor="engine", verb="alarm", result="failed", data={"alarm": "storm"})
    assert callbacks == [] and sent == []
