"""The API root, the OpenAPI schema, login and the pages a newcomer sees first."""

from __future__ import annotations

import pytest
import yaml
from django.contrib.auth.models import Group, User
from django.test import Client
from openapi_spec_validator import validate
from rest_framework.test import APIClient

from tests.console import factories as f


def test_api_root_lists_every_endpoint(admin_api: APIClient) -> None:
    root = admin_api.get("/api/").json()
    assert set(root) == {
        "clusters",
        "hosts",
        "fence-devices",
        "block-devices",
        "volume-groups",
        "logical-volumes",
        "filesystems",
        "failover-domains",
        "services",
        "jobs",
        "job-events",
        "events",
        "alert-hooks",
    }


def test_schema_is_valid_openapi_3(admin_api: APIClient) -> None:
    response = admin_api.get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.")
    validate(schema)
    assert "/api/services/{id}/" in schema["paths"]
    params = {p["name"] for p in schema["paths"]["/api/hosts/"]["get"]["parameters"]}
    assert {"cluster", "state", "limit", "offset"} <= params


def test_every_size_named_mb_says_its_unit_is_mib(admin_api: APIClient) -> None:
    """The ``_mb`` fields hold MiB (console/core/units.py): the schema says so for each one."""
    schema = yaml.safe_load(admin_api.get("/api/schema/").content)
    sizes = {
        (component, name): field.get("description", "")
        for component, body in schema["components"]["schemas"].items()
        for name, field in body.get("properties", {}).items()
        if name.endswith("_mb")
    }
    assert ("Host", "memory_total_mb") in sizes and ("VmService", "memory_mb") in sizes
    assert {k: d for k, d in sizes.items() if "in MiB" not in d} == {}


@pytest.fixture
def viewer_login(db: None) -> Client:
    user = User.objects.create_user("ann", password="correct horse battery")
    user.groups.add(Group.objects.get(name="viewer"))
    return Client()


def test_login_then_home_lists_clusters(viewer_login: Client) -> None:
    f.HostFactory(cluster__name="et-cluster")
    assert viewer_login.get("/").status_code == 302
    bad = viewer_login.post("/login/", {"username": "ann", "password": "wrong"})
    assert bad.status_code == 200 and b"Please enter a correct" in bad.content
    good = viewer_login.post("/login/", {"username": "ann", "password": "correct horse battery"})
    assert good.status_code == 302
    home = viewer_login.get("/")
    assert home.status_code == 200
    assert b"et-cluster" in home.content and b"0/1" in home.content


def test_healthz_needs_no_login(client: Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_admin_site_registers_every_model(db: None) -> None:
    from django.apps import apps
    from django.contrib import admin

    for label in ("clusters", "storage", "services", "jobs", "events"):
        for model in apps.get_app_config(label).get_models():
            assert admin.site.is_registered(model), model
