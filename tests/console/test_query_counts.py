"""Every page and main API list costs the same number of SQL queries whatever the number of
hosts, guests, events and incidents (no N+1): counted at two sizes of the cluster that
deploy/bench/pages.py times, and each pinned at most at its count today."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from deploy.bench.pages import build, pages

#: the queries of each request (session, user and roles included); lower is welcome, more is
#: a change to look at (deploy/bench/pages.py prints them at 10,000 guests)
CEILINGS = {
    "home": 7,
    "cluster page": 13,  # the hosts' names (the host filter), then one page of hosts
    "live fragment": 12,
    "service search (q=vm09)": 12,  # no match at these sizes: no page of rows to read
    "service search (q=vm000)": 13,
    "service filter (red)": 13,
    "host page": 11,  # its cluster's failover domains, with its own priority in each
    "host storage tab": 12,
    "failover domains": 9,
    "fence devices": 9,
    "migrate page": 14,  # the rulebook's rolling re-read: one slice of the services (snapshot.py)
    "incidents": 6,
    "event log": 8,
    "jobs": 5,
    "GET /api/services/": 5,
    "GET /api/hosts/": 5,
    "GET /api/clusters/": 5,
    "GET /api/failover-domains/": 8,
    "GET /api/jobs/": 4,
    "GET /api/events/": 5,
    "GET /api/…/policy/": 6,
}


def counts(client: Client, urls: dict[str, str]) -> dict[str, int]:
    out = {}
    for label, url in urls.items():
        client.get(url)  # what is kept between requests (the policy panel, incidents) is kept
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(url)
        assert response.status_code == 200, (label, url, response.status_code)
        out[label] = len(ctx.captured_queries)
    return out


@pytest.mark.django_db
def test_no_page_or_list_grows_its_queries_with_the_cluster(live_view: Any) -> None:
    cluster = build(hosts=2, services=8, failures=2, guests_per_failure=4)
    client = Client()
    client.force_login(User.objects.get(username="bench"))
    urls = pages(cluster)
    assert set(urls) == set(CEILINGS)
    small = counts(client, urls)
    # 8x the hosts, 50x the guests, 10x the host failures with 20x their guests
    build(hosts=14, services=392, failures=18, guests_per_failure=80)
    big = counts(client, urls)
    assert big == small
    over = {label: (n, CEILINGS[label]) for label, n in small.items() if n > CEILINGS[label]}
    assert not over, f"more queries than pinned (count, pin): {over}; all: {small}"
