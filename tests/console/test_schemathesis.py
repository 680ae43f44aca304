"""schemathesis against /api/schema/ (issue 11): every operation of the API, with inputs made
from the schema (valid and invalid), called with an admin token and with a viewer token on the
console's own WSGI application, in process: no answer is a 5xx, and no viewer write succeeds.

The number of examples per operation is bounded (``HAVEN_SCHEMATHESIS_EXAMPLES``, default 10:
about a minute on two cores); each example is sent once as the viewer and once as the admin.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.db import close_old_connections

from console.core.models import ApiToken
from tests.console import factories as f

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

EXAMPLES = int(os.environ.get("HAVEN_SCHEMATHESIS_EXAMPLES", "10"))
SAFE = {"GET", "HEAD", "OPTIONS"}


def not_writes() -> set[tuple[str, str]]:
    """POSTs that change nothing Haven holds: signing in (a viewer gets a token for itself)
    and the viewsets' ``read_actions`` (simulations any reader may run)."""
    from console.urls import router

    found = {("POST", "/api/token/")}
    for prefix, viewset, _ in router.registry:
        for name in getattr(viewset, "read_actions", ()):
            action = getattr(viewset, name)
            path = f"/api/{prefix}/{{id}}/" if action.detail else f"/api/{prefix}/"
            found |= {(verb.upper(), f"{path}{action.url_path}/") for verb in action.mapping}
    return found


@pytest.fixture
def world(db: None) -> dict[str, int]:
    """Objects for the operations to find: one of each, ids in the path parameters."""
    host = f.HostFactory(name="et-virt05", state="online")
    f.HostFactory(name="et-virt06", cluster=host.cluster, state="online")
    device = f.FenceDeviceFactory(host=host)
    domain = f.FailoverDomainFactory(cluster=host.cluster)
    f.FailoverDomainMemberFactory(domain=domain, host=host)
    service = f.VmServiceFactory(cluster=host.cluster, host=host, state="started")
    block = f.BlockDeviceFactory(host=host)
    vg = f.VolumeGroupFactory(cluster=host.cluster)
    lv = f.LogicalVolumeFactory(volume_group=vg)
    fs = f.FilesystemFactory(logical_volume=lv)
    job = f.JobFactory(cluster=host.cluster)
    event = f.JobEventFactory(job=job)
    return {
        "clusters": host.cluster_id,
        "hosts": host.pk,
        "fence-devices": device.pk,
        "failover-domains": domain.pk,
        "services": service.pk,
        "block-devices": block.pk,
        "volume-groups": vg.pk,
        "logical-volumes": lv.pk,
        "filesystems": fs.pk,
        "jobs": job.pk,
        "job-events": event.pk,
    }


@pytest.fixture
def tokens(db: None) -> dict[str, str]:
    from django.contrib.auth.models import Group, User

    keys = {}
    for role in ("admin", "viewer"):
        user = User.objects.create_user(f"st-{role}", password="pw-for-tests-only")
        user.groups.add(Group.objects.get_or_create(name=role)[0])
        keys[role] = ApiToken.issue(user)[1]
    return keys


@pytest.fixture
def in_process() -> Iterator[None]:
    """Requests made straight to the WSGI application inside the test's transaction: Django's
    own test client does the same (the connection is not closed after each request)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    cache.clear()
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def _strategy(operation: Any, world: dict[str, int]) -> Any:
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    strategies = [operation.as_strategy(generation_mode=mode) for mode in modes]
    match = re.match(r"/api/([a-z-]+)/\{id\}/", operation.path)
    if match and match.group(1) in world:  # also on an object that exists
        known = {"id": world[match.group(1)]}
        strategies += [
            operation.as_strategy(generation_mode=mode, path_parameters=known) for mode in modes
        ]
    return st.one_of(strategies)


def test_no_5xx_and_no_viewer_write(
    world: dict[str, int], tokens: dict[str, str], in_process: None
) -> None:
    from console.wsgi import application

    schema = schemathesis.openapi.from_wsgi("/api/schema/", application)
    statuses: Counter[int] = Counter()
    problems: list[str] = []
    operations = 0
    read_only = not_writes()
    assert ("POST", "/api/clusters/{id}/what-if/") in read_only
    start = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @settings(
            max_examples=EXAMPLES,
            phases=[Phase.generate],
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=_strategy(operation, world))
        def run(case: Any) -> None:
            for role in ("viewer", "admin"):
                response = case.call(headers={"Authorization": f"Token {tokens[role]}"})
                statuses[response.status_code] += 1
                where = f"{role} {case.method} {case.formatted_path}"
                if response.status_code >= 500:
                    problems.append(f"{where}: {response.status_code} {response.text[:300]}")
                write = case.method.upper() not in SAFE
                if (
                    role == "viewer"
                    and write
                    and (case.method.upper(), case.operation.path) not in read_only
                    and response.status_code < 400
                ):
                    problems.append(f"{where}: a viewer's write answered {response.status_code}")

        run()
    elapsed = time.monotonic() - start
    print(
        f"schemathesis: {operations} operations, {sum(statuses.values())} requests in "
        f"{elapsed:.0f} s; statuses {dict(sorted(statuses.items()))}"
    )
    assert operations >= 70
    assert not problems, "\n".join(problems[:40])
