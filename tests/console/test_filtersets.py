"""One filterset per list serves the page and the API: every API list names one, the pages use
the same class, and where the page and the API read a parameter differently both still do."""

from __future__ import annotations

import pytest
from django.core.exceptions import FieldDoesNotExist
from rest_framework.test import APIClient

from console.core.filtersets import API, PAGE, FilterSet
from console.events.filtersets import EventFilterSet
from console.events.models import Event
from console.events.views import EventList
from console.jobs.filtersets import JobFilterSet
from console.jobs.views import JobList
from console.urls import router
from tests.console import factories as f
from tests.console.views_support import login, text


def test_every_api_list_has_a_filterset_and_the_pages_share_theirs() -> None:
    viewsets = {prefix: viewset for prefix, viewset, _ in router.registry}
    missing = [p for p, v in viewsets.items() if not issubclass(v.filterset_class, FilterSet)]
    assert missing == []
    assert viewsets["events"].filterset_class is EventList.filterset is EventFilterSet
    assert viewsets["jobs"].filterset_class is JobList.filterset is JobFilterSet


def test_a_filter_on_a_field_the_model_lacks_fails_at_import() -> None:
    with pytest.raises(FieldDoesNotExist):

        class Wrong(FilterSet):
            model = Event
            fields = ("no_such_field",)


def test_page_and_api_surfaces_keep_their_own_meaning(db: None) -> None:
    for severity in ("info", "warning", "error"):
        Event.objects.create(actor="tester", verb=f"v-{severity}", severity=severity)
    page = EventFilterSet({"severity": "warning"}, Event.objects.all(), surface=PAGE)
    api = EventFilterSet({"severity": "warning"}, Event.objects.all(), surface=API)
    assert sorted(page.qs.values_list("severity", flat=True)) == ["error", "warning"]
    assert list(api.qs.values_list("severity", flat=True)) == ["warning"]
    assert {f.param for f in EventFilterSet.offered(API)} >= {"verb", "severity"}
    assert "period" not in {f.param for f in EventFilterSet.offered(API)}
    # a bad value filters nothing and is named
    bad = EventFilterSet({"result": "nope"}, Event.objects.all(), surface=PAGE)
    assert "result" in bad.errors and bad.qs.count() == 3


def test_the_api_and_the_page_answer_a_bad_value_each_their_way(admin_api: APIClient) -> None:
    jobs = [f.JobFactory(status="failed"), f.JobFactory(status="succeeded")]
    answer = admin_api.get("/api/jobs/", {"status": "purple"})
    assert answer.status_code == 400 and "status" in answer.json()
    assert admin_api.get("/api/jobs/", {"status": "failed"}).json()["count"] == 1
    page = login("viewer").get("/jobs/", {"status": "purple"})
    assert page.status_code == 200
    assert all(f'id="job-{j.pk}"' in text(page) for j in jobs)  # ignored: both listed
    only = text(login("viewer", "v2").get("/jobs/", {"status": "failed"}))
    assert f'id="job-{jobs[0].pk}"' in only and f'id="job-{jobs[1].pk}"' not in only


def test_a_page_ignores_a_value_no_database_holds(db: None) -> None:
    """The pages' filters are the API's: a cluster id past any database's range filters
    nothing (it once reached SQLite as an integer it cannot bind)."""
    client = login("viewer")
    for url in ("/jobs/", "/events/", "/events/incidents/"):
        assert client.get(url, {"cluster": str(2**70)}).status_code == 200, url
