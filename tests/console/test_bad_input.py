"""Every bad input is a 400 that names the field and says what is wrong; nothing is saved."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.apps import apps
from rest_framework.test import APIClient

from tests.console import factories as f


@dataclass
class Bad:
    id: str
    endpoint: str
    body: Callable[[], dict[str, Any]]
    field: str  # the key the 400 must name
    words: str  # a fragment of the explanation (case-insensitive)


def host_body(**over: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {
        "cluster": f.ClusterFactory().pk,
        "name": "et-virt05",
        "address": "10.88.0.5",
        **over,
    }


def fence_body(**over: Any) -> Callable[[], dict[str, Any]]:
    return lambda: f.fence_payload(**over)


def domain_body(
    members: Callable[[list[Any]], list[dict[str, Any]]], **over: Any
) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        cluster = f.ClusterFactory()
        hosts = [f.HostFactory(cluster=cluster), f.HostFactory(cluster=cluster)]
        return {"cluster": cluster.pk, "name": "prefer", "members": members(hosts), **over}

    return make


def service_body(xml: str | None = None, **over: Any) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        name = over.get("name", "guest1")
        return {
            "cluster": f.ClusterFactory().pk,
            "name": name,
            "domain_xml": f.domain_xml(name) if xml is None else xml,
            **{k: v for k, v in over.items() if k != "name"},
        }

    return make


def vg_body(**over: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {"cluster": f.ClusterFactory().pk, "name": "vg0", **over}


def lv_body(**over: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {
        "volume_group": f.VolumeGroupFactory().pk,
        "name": "vms",
        "size_bytes": 2**30,
        **over,
    }


def fs_body(**over: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {
        "logical_volume": f.LogicalVolumeFactory().pk,
        "name": "vms",
        "mount_point": "/mnt/vms",
        **over,
    }


def other_cluster_host(hosts: list[Any]) -> list[dict[str, Any]]:
    return [{"host": f.HostFactory().pk, "priority": 1}]


XML_WRONG_NAME = "<domain type='qemu'><name>other</name><memory>1024</memory></domain>"
XML_NEG_MEMORY = "<domain type='qemu'><name>guest1</name><memory>-1024</memory></domain>"
XML_NO_MEMORY = "<domain type='qemu'><name>guest1</name></domain>"
XML_BAD_UNIT = "<domain><name>guest1</name><memory unit='parsecs'>1</memory></domain>"
XML_ZERO_VCPU = "<domain><name>guest1</name><memory>1024</memory><vcpu>0</vcpu></domain>"
XML_ENTITY = (
    "<!DOCTYPE d [<!ENTITY x 'y'>]><domain><name>guest1</name><memory>1024</memory></domain>"
)

CASES = [
    Bad(
        "cluster name with space",
        "clusters",
        lambda: {"name": "my cluster"},
        "name",
        "not a valid cluster name",
    ),
    Bad(
        "cluster name with slash",
        "clusters",
        lambda: {"name": "a/b"},
        "name",
        "not a valid cluster name",
    ),
    Bad("cluster name too long", "clusters", lambda: {"name": "x" * 16}, "name", "15"),
    Bad("cluster name with colon", "clusters", lambda: {"name": "a:b"}, "name", "lock table"),
    Bad("host name with space", "hosts", host_body(name="et virt05"), "name", "host name"),
    Bad("host name shell", "hosts", host_body(name="x;reboot"), "name", "host name"),
    Bad("host address", "hosts", host_body(address="10.0.0.1/24"), "address", "host address"),
    Bad("host unknown cluster", "hosts", host_body(cluster=999999), "cluster", "invalid pk"),
    Bad("fence agent not fence_", "fence-devices", fence_body(agent="rm"), "agent", "fence agent"),
    Bad(
        "fence password in plain parameters",
        "fence-devices",
        fence_body(parameters={"password": "x"}),
        "parameters",
        "secret",
    ),
    Bad(
        "fence parameter line break",
        "fence-devices",
        fence_body(parameters={"ip": "1\naction=off"}),
        "parameters",
        "line break",
    ),
    Bad(
        "fence secret line break",
        "fence-devices",
        fence_body(secret_parameters={"password": "a\nb"}),
        "secret_parameters",
        "line break",
    ),
    Bad(
        "fence key upper case",
        "fence-devices",
        fence_body(parameters={"IP": "10.0.0.1"}),
        "parameters",
        "fence parameter name",
    ),
    Bad(
        "fence key with dot",
        "fence-devices",
        fence_body(parameters={"a.b": "1"}),
        "parameters",
        "fence parameter name",
    ),
    Bad(
        "fence key action",
        "fence-devices",
        fence_body(parameters={"action": "off"}),
        "parameters",
        "sets the action itself",
    ),
    Bad(
        "fence key plug",
        "fence-devices",
        fence_body(parameters={"plug": "3"}),
        "parameters",
        "own field",
    ),
    Bad(
        "fence key with newline",
        "fence-devices",
        fence_body(parameters={"ip\n": "1"}),
        "parameters",
        "fence parameter name",
    ),
    Bad(
        "fence key with NUL",
        "fence-devices",
        fence_body(parameters={"ip\x00": "1"}),
        "parameters",
        "fence parameter name",
    ),
    Bad(
        "fence value with NUL",
        "fence-devices",
        fence_body(parameters={"ip": "10.0.0.1\x00x"}),
        "parameters",
        "nul",
    ),
    Bad(
        "fence Kg key in plain parameters",
        "fence-devices",
        fence_body(parameters={"hexadecimal_kg": "00ff"}),
        "parameters",
        "secret",
    ),
    Bad(
        "fence password script in plain parameters",
        "fence-devices",
        fence_body(parameters={"passwd_script": "/bin/pw"}),
        "parameters",
        "secret",
    ),
    Bad(
        "fence plug with carriage return",
        "fence-devices",
        fence_body(plug="3\raction=off"),
        "plug",
        "one line",
    ),
    Bad(
        "fence secret key invalid",
        "fence-devices",
        fence_body(secret_parameters={"Pass Word": "x"}),
        "secret_parameters",
        "fence parameter name",
    ),
    Bad(
        "host libvirt uri with command",
        "hosts",
        host_body(libvirt_uri="qemu+ext:///system?command=/tmp/evil"),
        "libvirt_uri",
        "without a query string",
    ),
    Bad(
        "host address with ipv6 scope id",
        "hosts",
        host_body(address='fe80::1%x"\nauth_tcp = "none'),
        "address",
        "host address",
    ),
    Bad(
        "host name reserved for the console",
        "hosts",
        host_body(name="haven-console"),
        "name",
        "reserved for the console",
    ),
    Bad(
        "fence device without cluster", "fence-devices", fence_body(cluster=None), "cluster", "null"
    ),
    Bad(
        "fence host of another cluster",
        "fence-devices",
        lambda: {**fence_body()(), "cluster": f.ClusterFactory().pk},
        "host",
        "is not in cluster",
    ),
    Bad(
        "domain priority 0",
        "failover-domains",
        domain_body(lambda h: [{"host": h[0].pk, "priority": 0}]),
        "members",
        "1",
    ),
    Bad(
        "domain priority 101",
        "failover-domains",
        domain_body(lambda h: [{"host": h[0].pk, "priority": 101}]),
        "members",
        "100",
    ),
    Bad(
        "domain member twice",
        "failover-domains",
        domain_body(lambda h: [{"host": h[0].pk, "priority": 1}, {"host": h[0].pk, "priority": 2}]),
        "members",
        "twice",
    ),
    Bad(
        "domain member of another cluster",
        "failover-domains",
        domain_body(other_cluster_host),
        "members",
        "not in cluster",
    ),
    Bad(
        "domain name with space",
        "failover-domains",
        domain_body(lambda h: [], name="a b"),
        "name",
        "not a valid name",
    ),
    Bad("service name with slash", "services", service_body(name="a/b"), "name", "guest name"),
    Bad("service name with space", "services", service_body(name="my guest"), "name", "guest name"),
    Bad(
        "xml does not parse",
        "services",
        service_body(xml="<domain><name>guest1"),
        "domain_xml",
        "does not parse",
    ),
    Bad(
        "xml name differs", "services", service_body(xml=XML_WRONG_NAME), "domain_xml", "must match"
    ),
    Bad(
        "xml negative memory",
        "services",
        service_body(xml=XML_NEG_MEMORY),
        "domain_xml",
        "positive",
    ),
    Bad(
        "xml without memory",
        "services",
        service_body(xml=XML_NO_MEMORY),
        "domain_xml",
        "no <memory>",
    ),
    Bad(
        "xml unknown unit",
        "services",
        service_body(xml=XML_BAD_UNIT),
        "domain_xml",
        "unknown memory unit",
    ),
    Bad("xml zero vcpus", "services", service_body(xml=XML_ZERO_VCPU), "domain_xml", "at least 1"),
    Bad("xml entities", "services", service_body(xml=XML_ENTITY), "domain_xml", "entities"),
    Bad("xml empty", "services", service_body(xml=" "), "domain_xml", "blank"),
    Bad(
        "recovery unknown",
        "services",
        service_body(recovery="pray"),
        "recovery",
        "not a valid choice",
    ),
    Bad(
        "negative max_restarts",
        "services",
        service_body(max_restarts=-1),
        "max_restarts",
        "greater than or equal to 0",
    ),
    Bad(
        "negative restart window",
        "services",
        service_body(restart_window_s=-5),
        "restart_window_s",
        "greater than or equal to 0",
    ),
    Bad(
        "desired state unknown",
        "services",
        service_body(desired_state="maybe"),
        "desired_state",
        "not a valid choice",
    ),
    Bad("vg name shell", "volume-groups", vg_body(name="x; rm -rf /"), "name", "volume group name"),
    Bad("vg name leading dash", "volume-groups", vg_body(name="-vg"), "name", "volume group name"),
    Bad(
        "vg extent not power of two",
        "volume-groups",
        vg_body(extent_size_bytes=3000000),
        "extent_size_bytes",
        "power of two",
    ),
    Bad("lv reserved name", "logical-volumes", lv_body(name="snapshot1"), "name", "reserved"),
    Bad(
        "lv size zero",
        "logical-volumes",
        lv_body(size_bytes=0),
        "size_bytes",
        "greater than or equal to 1",
    ),
    Bad(
        "lv size negative",
        "logical-volumes",
        lv_body(size_bytes=-1),
        "size_bytes",
        "greater than or equal to",
    ),
    Bad(
        "fs zero journals",
        "filesystems",
        fs_body(journals=0),
        "journals",
        "greater than or equal to 1",
    ),
    Bad(
        "fs relative mount point",
        "filesystems",
        fs_body(mount_point="mnt/vms"),
        "mount_point",
        "absolute path",
    ),
    Bad(
        "fs mount point with dots",
        "filesystems",
        fs_body(mount_point="/mnt/../etc"),
        "mount_point",
        "'..'",
    ),
    Bad("fs name too long for lock table", "filesystems", fs_body(name="f" * 31), "name", "30"),
    Bad(
        "probe address with a shell word",
        "services",
        service_body(probe="tcp", probe_host="10.0.0.5;reboot", probe_port=80),
        "probe_host",
        "not a valid host address",
    ),
    Bad(
        "probe without a port",
        "services",
        service_body(probe="http", probe_host="10.0.0.5"),
        "probe_port",
        "port of the guest's service",
    ),
    Bad(
        "probe port out of range",
        "services",
        service_body(probe="tcp", probe_host="10.0.0.5", probe_port=70000),
        "probe_port",
        "65535",
    ),
    Bad(
        "probe path with a space",
        "services",
        service_body(probe="http", probe_host="web", probe_port=80, probe_path="/a b"),
        "probe_path",
        "not a valid URL path",
    ),
    Bad("probe kind unknown", "services", service_body(probe="icmp"), "probe", "not a valid"),
    Bad(
        "guest agent misses zero",
        "services",
        service_body(health_agent_interval_s=5, health_agent_misses=0),
        "health_agent_misses",
        "greater than or equal to 1",
    ),
    Bad(
        "block device outside /dev",
        "block-devices",
        lambda: {"host": f.HostFactory().pk, "path": "/etc/passwd"},
        "path",
        "under /dev",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_a_clear_400(admin_api: APIClient, case: Bad) -> None:
    body = case.body()
    before = {label: _model_counts(label) for label in ("clusters", "services", "storage")}
    response = admin_api.post(f"/api/{case.endpoint}/", body, format="json")
    assert response.status_code == 400, response.content
    errors = response.json()
    assert case.field in errors, errors
    text = str(errors[case.field]).lower()
    assert case.words.lower() in text, errors
    after = {label: _model_counts(label) for label in ("clusters", "services", "storage")}
    assert before == after  # nothing half-saved


def _model_counts(label: str) -> dict[str, int]:
    return {m.__name__: m.objects.count() for m in apps.get_app_config(label).get_models()}


def test_at_least_25_distinct_cases() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 25


def test_duplicate_names_are_400(admin_api: APIClient) -> None:
    f.ClusterFactory(name="dup")
    response = admin_api.post("/api/clusters/", {"name": "dup"}, format="json")
    assert response.status_code == 400
    assert "already exists" in str(response.json()["name"])
    host = f.HostFactory()
    again = admin_api.post(
        "/api/hosts/",
        {"cluster": host.cluster.pk, "name": host.name, "address": "10.88.0.99"},
        format="json",
    )
    assert again.status_code == 400 and "name" in again.json()


def test_update_with_bad_value_changes_nothing(admin_api: APIClient) -> None:
    service = f.VmServiceFactory(priority=5)
    response = admin_api.patch(
        f"/api/services/{service.pk}/", {"priority": 7, "domain_xml": "<domain>"}, format="json"
    )
    assert response.status_code == 400 and "domain_xml" in response.json()
    service.refresh_from_db()
    assert service.priority == 5


def test_domain_in_use_cannot_be_deleted(admin_api: APIClient) -> None:
    domain = f.FailoverDomainFactory(name="bias-et-virt05")
    f.VmServiceFactory(cluster=domain.cluster, name="guest2", failover_domain=domain)
    f.VmServiceFactory(cluster=domain.cluster, name="guest1", failover_domain=domain)
    response = admin_api.delete(f"/api/failover-domains/{domain.pk}/")
    assert response.status_code == 409
    assert "guest1, guest2" in response.json()["detail"]
    assert admin_api.get(f"/api/failover-domains/{domain.pk}/").status_code == 200


def test_service_domain_of_other_cluster(admin_api: APIClient) -> None:
    domain = f.FailoverDomainFactory()
    body = service_body()()
    body["failover_domain"] = domain.pk
    response = admin_api.post("/api/services/", body, format="json")
    assert response.status_code == 400
    assert "another cluster" in str(response.json()["failover_domain"])


def test_malformed_json_is_400(admin_api: APIClient) -> None:
    response = admin_api.generic(
        "POST", "/api/clusters/", "{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]


# --- inputs that once answered 500 (issue 11): each is now a 4xx in JSON naming what is wrong --
BIG = 10**30


def test_patch_domain_member_without_host(admin_api: APIClient) -> None:
    domain = f.FailoverDomainFactory()
    response = admin_api.patch(
        f"/api/failover-domains/{domain.pk}/", {"members": [{"priority": 1}]}, format="json"
    )
    assert response.status_code == 400, response.content
    assert "host" in str(response.json()["members"])


@pytest.mark.parametrize(
    "query, field",
    [
        (f"hosts/?cluster={BIG}", "cluster"),
        (f"hosts/?cluster={-BIG}", "cluster"),
        (f"services/?host={BIG}", "host"),
        (f"jobs/?cluster={BIG}", "cluster"),
        (f"events/?cluster={BIG}", "cluster"),
        (f"block-devices/?host={BIG}", "host"),
        (f"clusters/?offset={BIG}", "offset"),
    ],
)
def test_integer_filter_out_of_range(admin_api: APIClient, query: str, field: str) -> None:
    f.HostFactory()
    response = admin_api.get(f"/api/{query}")
    assert response.status_code == 400, response.content
    assert "out of range" in str(response.json()[field])


def test_huge_limit_is_capped(admin_api: APIClient) -> None:
    f.ClusterFactory()
    response = admin_api.get(f"/api/clusters/?limit={BIG}")
    assert response.status_code == 200 and response.json()["count"] == 1


@pytest.mark.parametrize(
    "xml, words",
    [
        (
            f"<domain><name>guest1</name><memory unit='TiB'>{10**25}</memory></domain>",
            "more than 64 tib",
        ),
        (
            f"<domain><name>guest1</name><memory>1024</memory><vcpu>{10**30}</vcpu></domain>",
            "more than 4096",
        ),
    ],
    ids=["memory", "vcpu"],
)
def test_domain_xml_sizes_are_bounded(admin_api: APIClient, xml: str, words: str) -> None:
    response = admin_api.post("/api/services/", service_body(xml=xml)(), format="json")
    assert response.status_code == 400, response.content
    assert words in str(response.json()["domain_xml"]).lower()


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("url", ["/api/clusters/", "/api/token/"])
def test_deeply_nested_json_is_400(make_client: Any, url: str) -> None:
    api = make_client("admin" if url == "/api/clusters/" else None)
    response = api.generic("POST", url, DEEP, content_type="application/json")
    assert response.status_code == 400, response.content
    assert "nested more than" in response.json()["detail"]
    moderately = {
        "name": "c1",
        "description": "x",
        "extra": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
    }
    again = api.post(url, moderately, format="json")
    assert again.status_code == 400 and "nested more than" in again.json()["detail"]


def test_api_errors_are_json(admin_api: APIClient) -> None:
    response = admin_api.get("/api/no-such-list/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert "/api/no-such-list/" in response.json()["detail"]


def test_api_server_error_is_json(rf: Any) -> None:
    from console.core.views import server_error

    response = server_error(rf.get("/api/clusters/"))
    assert response.status_code == 500 and response["Content-Type"] == "application/json"
    assert "log" in json.loads(response.content)["detail"]
    page = server_error(rf.get("/clusters/1/"))
    assert page.status_code == 500 and b"<html" in page.content


def test_fence_secrets_are_stored_encrypted_and_never_shown(
    admin_api: APIClient, viewer_api: APIClient
) -> None:
    body = fence_body(
        parameters={"ip": "10.0.0.9", "lanplus": "1"},
        secret_parameters={"password": "pw-1", "hexadecimal_kg": "00ff", "passwd_script": "/s"},
    )()
    response = admin_api.post("/api/fence-devices/", body, format="json")
    assert response.status_code == 201, response.content
    pk = response.json()["id"]
    for api in (admin_api, viewer_api):
        shown = api.get(f"/api/fence-devices/{pk}/").content.decode()
        assert "00ff" not in shown and "pw-1" not in shown and '"/s"' not in shown
        assert api.get(f"/api/fence-devices/{pk}/").json()["secret_keys"] == [
            "hexadecimal_kg",
            "passwd_script",
            "password",
        ]
    from console.clusters.models import FenceDevice

    device = FenceDevice.objects.get(pk=pk)
    assert "00ff" not in device.secret_parameters_encrypted
    assert device.secret_parameters["hexadecimal_kg"] == "00ff"


def test_migration_encrypts_secrets_stored_in_clear(db: None) -> None:
    import importlib

    from django.apps import apps as django_apps

    from console.clusters.models import FenceDevice

    migration = importlib.import_module(
        "console.clusters.migrations.0003_libvirt_uri_grammar_secret_parameters"
    )
    device = f.FenceDeviceFactory()
    device.secret_parameters = {"password": "pw"}
    device.parameters = {"ip": "10.0.0.9", "hexadecimal_kg": "00ff", "passwd_script": "/s"}
    device.save()  # as an older console stored it
    migration.encrypt_plain_secrets(django_apps, None)
    device = FenceDevice.objects.get(pk=device.pk)
    assert device.parameters == {"ip": "10.0.0.9"}
    assert device.secret_parameters == {
        "password": "pw",
        "hexadecimal_kg": "00ff",
        "passwd_script": "/s",
    }


@pytest.mark.parametrize(
    "validator, good",
    [
        ("validate_cluster_name", "et"),
        ("validate_hostname", "et-virt05"),
        ("validate_address", "10.88.0.5"),
        ("validate_libvirt_uri", "qemu+tcp://10.88.0.5/system"),
        ("validate_guest_name", "guest1"),
        ("validate_vg_name", "vg0"),
        ("validate_lv_name", "vms"),
        ("validate_fs_name", "vms"),
        ("validate_mount_point", "/mnt/vms"),
        ("validate_device_path", "/dev/sdb"),
        ("validate_fence_agent", "fence_ipmilan"),
        ("validate_fence_parameter", "lanplus"),
        ("validate_object_name", "bmc"),
    ],
)
def test_validators_match_the_whole_value(validator: str, good: str) -> None:
    """(Serializers strip whitespace; forms, the bootstrap and the agent must not need to.)"""
    from django.core.exceptions import ValidationError

    from console.core import validators

    check = getattr(validators, validator)
    check(good)
    for bad in (good + "\n", good + "\x00", "\n" + good, good + " x"):
        with pytest.raises(ValidationError):
            check(bad)
