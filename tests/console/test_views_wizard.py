"""The create-cluster wizard: host keys shown and confirmed, passwords used once and never
shown, stored or logged, and a progress page with each host's steps and exact errors."""

from __future__ import annotations

import logging

import pytest

from console.clusters import views as cluster_views
from console.events.models import Event
from console.jobs import services as jobs
from console.jobs.models import Job, JobEvent, JobStep
from tests.console.fake_bootstrap import FakeBootstrap
from tests.console.views_support import login, text

SECRET = "root-pw-Zx81"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeBootstrap:
    boot = FakeBootstrap({"10.88.0.5": "SHA256:aaaa5", "10.88.0.6": "SHA256:bbbb6"})
    monkeypatch.setattr(cluster_views, "_bootstrap", lambda: boot)
    return boot


def rows(*hosts: tuple[str, str], **extra: str) -> dict[str, str]:
    data = {
        "hosts-TOTAL_FORMS": str(len(hosts)),
        "hosts-INITIAL_FORMS": "0",
        "hosts-MIN_NUM_FORMS": "1",
        "hosts-MAX_NUM_FORMS": "64",
    }
    for i, (name, address) in enumerate(hosts):
        data.update(
            {f"hosts-{i}-name": name, f"hosts-{i}-address": address, f"hosts-{i}-port": "22"}
        )
    return {**data, **extra}


HOSTS = (("et-virt05", "10.88.0.5"), ("et-virt06", "10.88.0.6"))


def test_scan_shows_fingerprints_then_create_starts_job(
    db: None, fake: FakeBootstrap, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = login("admin")
    base = {"name": "et", "password_mode": "same", "shared_storage": "on"}
    scan = client.post("/clusters/new/", rows(*HOSTS, step="scan", **base))
    body = text(scan)
    assert "SHA256:aaaa5" in body and "SHA256:bbbb6" in body
    assert "I checked these host key fingerprints" in body
    data = rows(*HOSTS, step="create", password=SECRET, **base)
    data.update({"hosts-0-fingerprint": "SHA256:aaaa5", "hosts-1-fingerprint": "SHA256:bbbb6"})
    unconfirmed = client.post("/clusters/new/", data)
    assert "tick this box to trust them" in text(unconfirmed)
    assert SECRET not in text(unconfirmed)  # never sent back
    response = client.post("/clusters/new/", {**data, "confirm": "on"})
    assert response.status_code == 302
    job = Job.objects.get(kind="bootstrap")
    assert response["Location"] == f"/jobs/{job.pk}/"
    name, specs, shared = fake.calls[0]
    assert (name, shared) == ("et", True)
    assert [(s.name, s.password, s.fingerprint) for s in specs] == [
        ("et-virt05", SECRET, "SHA256:aaaa5"),
        ("et-virt06", SECRET, "SHA256:bbbb6"),
    ]
    stored = [
        *Event.objects.values_list("message", "data"),
        *JobEvent.objects.values_list("message", "data"),
        *JobStep.objects.values_list("args", "result"),
        *Job.objects.values_list("params", "explanation"),
    ]
    assert SECRET not in repr(stored)
    assert SECRET not in caplog.text


def test_per_host_passwords(db: None, fake: FakeBootstrap) -> None:
    client = login("admin")
    data = rows(*HOSTS, step="create", name="et", password_mode="each", confirm="on")
    data.update({"hosts-0-fingerprint": "SHA256:aaaa5", "hosts-1-fingerprint": "SHA256:bbbb6"})
    missing = client.post("/clusters/new/", {**data, "hosts-0-password": "p5"})
    assert "Give this host's root password." in text(missing)
    ok = client.post("/clusters/new/", {**data, "hosts-0-password": "p5", "hosts-1-password": "p6"})
    assert ok.status_code == 302
    assert [s.password for s in fake.calls[0][1]] == ["p5", "p6"]


def test_unreachable_host_and_bad_input_are_shown_next_to_fields(
    db: None, fake: FakeBootstrap
) -> None:
    client = login("admin")
    body = text(
        client.post(
            "/clusters/new/",
            rows(("et-virt09", "10.88.0.9"), step="scan", name="et", password_mode="same"),
        )
    )
    assert "Could not read the SSH host key: 10.88.0.9:22 is unreachable" in body
    bad = text(
        client.post(
            "/clusters/new/",
            rows(
                ("bad host", ""),
                ("et-virt05", "10.88.0.5"),
                step="scan",
                name="way-too-long-cluster-name",
                password_mode="same",
            ),
        )
    )
    assert "is not a valid cluster name" in bad
    assert "is not a valid host name" in bad
    dupes = text(
        client.post(
            "/clusters/new/", rows(HOSTS[0], HOSTS[0], step="scan", name="et", password_mode="same")
        )
    )
    assert "Each host can be listed once: et-virt05 twice." in dupes
    none = text(
        client.post("/clusters/new/", rows(("", ""), step="scan", name="et", password_mode="same"))
    )
    assert "Give at least one host." in none


def test_add_row_keeps_what_was_typed(db: None, fake: FakeBootstrap) -> None:
    client = login("admin")
    body = text(
        client.post(
            "/clusters/new/", rows(HOSTS[0], step="add-row", name="et", password_mode="same")
        )
    )
    assert 'name="hosts-1-name"' in body and 'value="et-virt05"' in body


def test_progress_page_shows_each_host_and_the_exact_error(db: None, fake: FakeBootstrap) -> None:
    client = login("admin")
    data = rows(
        *HOSTS, step="create", name="et", password_mode="same", password=SECRET, confirm="on"
    )
    data.update({"hosts-0-fingerprint": "SHA256:aaaa5", "hosts-1-fingerprint": "SHA256:bbbb6"})
    job = Job.objects.get(pk=int(client.post("/clusters/new/", data)["Location"].split("/")[2]))
    steps = {(s.host.name, s.kind): s for s in job.steps.select_related("host")}
    jobs.finish_console_step(steps["et-virt05", "bootstrap.connect"], ok=True, message="")
    jobs.finish_console_step(
        steps["et-virt06", "bootstrap.connect"],
        ok=False,
        message="authentication failed for root@10.88.0.6: wrong password",
    )
    page = text(client.get(f"/jobs/{job.pk}/"))
    assert "Creating cluster et" in page
    assert 'id="bootstrap-et-virt05"' in page and 'id="bootstrap-et-virt06"' in page
    assert "authentication failed for root@10.88.0.6: wrong password" in page
    assert "configure libvirt migration" in page
    live = text(client.get(f"/jobs/{job.pk}/live/"))
    assert 'data-status="failed"' in live and "hx-trigger" not in live  # stops polling


def test_only_admins_may_create_clusters(db: None, fake: FakeBootstrap) -> None:
    assert login("operator").get("/clusters/new/").status_code == 403
    assert login("viewer", "v").post("/clusters/new/", rows(*HOSTS, step="scan")).status_code == 403


@pytest.mark.parametrize("step", ["add-row", "scan", "create"])
def test_row_count_that_is_not_a_number_is_a_form_error(
    db: None, fake: FakeBootstrap, step: str
) -> None:
    client = login("admin")
    data = rows(*HOSTS, step=step, name="et", password_mode="same")
    data["hosts-TOTAL_FORMS"] = "abc"
    response = client.post("/clusters/new/", data)
    assert response.status_code == 200
    assert "row count is missing or not a number" in text(response)
    assert not Job.objects.exists()
