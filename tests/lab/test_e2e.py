"""The article, end to end, on real lab hosts and through the console's API.

One module-wide cluster: three lab hosts bootstrapped over SSH by the console, a real console
(Celery worker + beat) on the test database, a Redis on the lab bridge, fence_ipmilan against
each host's BMC, and guest1..3 (the tick guest) with one ordered failover domain per host.
Tests run in file order, each one starting from the cluster the previous one left healthy.

The lab fences with action ``off`` (HAVEN_FENCE_ACTION): the tests power hosts back on
themselves, so "power back → failback" is a step of its own. During every test a watcher polls
every host's libvirtd (through its UNIX socket, so a cut cable does not blind it) every 100 ms
and fails the test if a guest ever runs on two hosts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import article
import pytest
from rest_framework.test import APIClient

from console.jobs.models import Job, JobStatus
from tests.lab import harness
from tests.lab.harness import HOSTS, haven_lab

pytestmark = pytest.mark.lab
OVERRIDES = harness.LAB_OVERRIDES


class Cluster:
    def __init__(self, lab: haven_lab.Lab, api: APIClient, console: harness.Console) -> None:
        self.lab, self.api, self.console = lab, api, console
        self.watcher: harness.SplitBrainWatcher | None = None

    def services(self) -> dict[str, tuple[str, str | None]]:
        hosts = {h["id"]: h["name"] for h in self.api.get("/api/hosts/").json()["results"]}
        return {
            s["name"]: (s["state"], hosts.get(s["host"]))
            for s in self.api.get("/api/services/").json()["results"]
        }

    def hosts(self) -> dict[str, str]:
        return {h["name"]: h["state"] for h in self.api.get("/api/hosts/").json()["results"]}

    def service_id(self, name: str) -> int:
        return next(
            s["id"] for s in self.api.get("/api/services/").json()["results"] if s["name"] == name
        )

    def host_id(self, name: str) -> int:
        return next(
            h["id"] for h in self.api.get("/api/hosts/").json()["results"] if h["name"] == name
        )

    def wait(self, what: str, check: Any, timeout: float = 40.0) -> Any:
        try:
            return harness.wait(what, check, timeout)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nservices {self.services()}\nhosts {self.hosts()}\n"
                f"jobs {self.jobs_summary()}\n{self.console.log_text()[-6000:]}"
            ) from None

    def jobs_summary(self) -> list[str]:
        return [
            f"{j.pk} {j.kind} {j.params.get('service', j.params.get('host', ''))} {j.status} "
            f"{j.explanation[:120]}"
            for j in Job.objects.order_by("-pk")[:15]
        ]

    def home(self) -> dict[str, tuple[str, str]]:
        return {g: ("started", h) for g, h in article.GUESTS.items()}

    def serial(self, host: str, guest: str) -> Path:
        return self.lab.host(host).dir / "log" / "libvirt" / "qemu" / f"{guest}-serial.log"

    def running_on(self, host: str) -> set[str]:
        return harness.running_guests(harness.unix_uri(self.lab.host(host))) or set()


def _ticks(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"tick (\d+)", text)]


@pytest.fixture(scope="module")
def cluster(django_db_setup: None, django_db_blocker: Any) -> Iterator[Cluster]:
    yield from harness.lab_cluster(django_db_blocker, Cluster, admin="e2e-admin")


@pytest.fixture(autouse=True)
def no_split_brain(cluster: Cluster, django_db_blocker: Any) -> Iterator[None]:
    """Every test: DB access, and a watcher that fails it if a guest runs on two hosts."""
    yield from harness.watch_split_brain(cluster, django_db_blocker)


def test_1_cluster_formed_from_three_hosts_by_ssh_bootstrap(cluster: Cluster) -> None:
    job = article.form_cluster(cluster.lab, actor="e2e")
    assert job.status == JobStatus.SUCCEEDED, job.explanation
    assert job.steps.count() == 12
    cluster.wait("three hosts online", lambda: cluster.hosts() == dict.fromkeys(HOSTS, "online"))
    for name in HOSTS:  # the agent really runs inside its host, from the installed venv
        ps = cluster.lab.run_in(name, ["ps", "-ww", "-eo", "args"]).stdout
        assert "/opt/haven-agent/" in ps and f"--host {name}" in ps


def _client_pki(directory: Path, ca_pem: str, cluster_row: Any, name: str) -> str:
    """A libvirt client's pkipath: ``ca_pem`` trusted, a client certificate of cluster_row's CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    from console.bootstrap import pki

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cacert.pem").write_text(ca_pem)
    (directory / "clientcert.pem").write_text(
        pki.issue_host_certificate(cluster_row, name, "10.88.0.254", csr)
    )
    (directory / "clientkey.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / "clientkey.pem").chmod(0o600)
    return str(directory)


def test_1b_libvirtd_takes_only_tls_with_a_certificate_of_the_cluster_ca(
    cluster: Cluster, tmp_path: Path
) -> None:
    """After the bootstrap each libvirtd listens on TLS only and verifies both ways."""
    import libvirt

    from console.bootstrap import pki
    from console.clusters.models import Cluster as ClusterRow
    from console.clusters.models import Host

    lab_cluster = ClusterRow.objects.get(name=article.CLUSTER)
    stranger = ClusterRow.objects.create(name="stranger")  # another CA, same kind of certificate
    ours, theirs = pki.ca_certificate(lab_cluster), pki.ca_certificate(stranger)
    good = _client_pki(tmp_path / "good", ours, lab_cluster, "e2e-client")
    # trusts our CA too (libvirt checks its own certificate against its CA file first), but
    # its certificate is of the other CA: the host's libvirtd must refuse it
    wrong_client = _client_pki(tmp_path / "wrong-client", ours + theirs, stranger, "e2e-client")
    wrong_server = _client_pki(tmp_path / "wrong-server", theirs, stranger, "e2e-client")
    for name in HOSTS:
        host = cluster.lab.host(name)
        assert Host.objects.get(name=name).tls_certificate  # issued and installed
        assert not haven_lab.tcp_open(host.address, haven_lab.LIBVIRT_PORT, 0.5)
        with pytest.raises(libvirt.libvirtError, match=r"Connection refused"):
            libvirt.open(f"qemu+tcp://{host.address}/system")  # plain TCP: refused
        uri = f"qemu+tls://{host.address}/system?pkipath="
        with pytest.raises(libvirt.libvirtError) as refused_by_server:
            libvirt.open(uri + wrong_client).getHostname()
        assert "Our own certificate" not in str(refused_by_server.value)  # the server said no
        with pytest.raises(libvirt.libvirtError) as refused_by_client:
            libvirt.open(uri + wrong_server)
        conn = libvirt.open(uri + good)  # the cluster's CA on both sides: in
        try:
            assert conn.getHostname() == name
        finally:
            conn.close()
        print(
            f"{name}: tcp refused; a client of another CA: {refused_by_server.value}; "
            f"a server not of our CA: {refused_by_client.value}"
        )
    stranger.delete()


def test_2_guests_start_on_their_preferred_hosts(cluster: Cluster) -> None:
    article.define_fencing_and_guests(cluster.api, cluster.lab, cluster.kernel)  # type: ignore[attr-defined]
    cluster.wait("guest1..3 started at home", lambda: cluster.services() == cluster.home())
    for guest, home in article.GUESTS.items():
        assert cluster.running_on(home) >= {guest}
        cluster.wait(
            f"{guest} ticking",
            lambda g=guest, h=home: _ticks(
                cluster.serial(h, g).read_text() if cluster.serial(h, g).exists() else ""
            ),
            10,
        )


def test_3_a_killed_guest_restarts_on_the_same_host(cluster: Cluster) -> None:
    lab = cluster.lab
    before = Job.objects.filter(kind="start").count()
    # virsh destroy behind the cluster's back
    lab.run_in("et-virt05", ["virsh", "-c", "qemu:///system", "destroy", "guest1"], check=True)
    cluster.wait(
        "guest1 running again on et-virt05",
        lambda: "guest1" in cluster.running_on("et-virt05")
        and Job.objects.filter(kind="start", status=JobStatus.SUCCEEDED).count() == before + 1,
        timeout=20,
    )
    # kill -9 of the guest's qemu
    pidfile = lab.host("et-virt06").dir / "run" / "libvirt" / "qemu" / "guest2.pid"
    pid = pidfile.read_text().strip()
    lab.run_in("et-virt06", ["kill", "-9", pid], check=True)
    cluster.wait(
        "guest2 running again on et-virt06",
        lambda: "guest2" in cluster.running_on("et-virt06")
        and Job.objects.filter(kind="start", status=JobStatus.SUCCEEDED).count() == before + 2,
        timeout=20,
    )
    cluster.wait("all guests started at home", lambda: cluster.services() == cluster.home(), 10)


def test_4_power_loss_fences_through_ipmi_then_guests_run_elsewhere(cluster: Cluster) -> None:
    lab = cluster.lab
    fences = Job.objects.filter(kind="fence").count()
    lost_at = time.monotonic()
    lab.power_off("et-virt07")
    state = cluster.wait(
        "guest3 running on another host",
        lambda: cluster.services()["guest3"][0] == "started"
        and cluster.services()["guest3"][1] in ("et-virt05", "et-virt06")
        and cluster.services()["guest3"],
        timeout=40,
    )
    took = time.monotonic() - lost_at
    fence = Job.objects.filter(kind="fence").order_by("pk")[fences]
    assert fence.status == JobStatus.SUCCEEDED
    step = fence.steps.get()
    assert step.args["agent"] == "fence_ipmilan" and step.args["action"] == "off"
    assert "password" not in step.args["params"]  # resolved only when sent
    start = Job.objects.filter(kind="start", params__service="guest3").latest("pk")
    assert start.created >= fence.finished, "guest3 started before the fence succeeded"
    assert "guest3" in cluster.running_on(state[1])
    assert cluster.hosts()["et-virt07"] == "fenced"
    assert not lab.host("et-virt07").powered_on()  # the BMC said off, and it is
    print(f"power loss -> guest3 running on {state[1]} in {took:.1f} s")


def test_5_host_powered_back_guests_fail_back_by_live_migration(cluster: Cluster) -> None:
    lab = cluster.lab
    away = cluster.services()["guest3"][1]
    assert away is not None
    starts = Job.objects.filter(kind="start", params__service="guest3").count()
    source_log = cluster.serial(away, "guest3")
    cluster.wait("guest3 ticking on " + away, lambda: _ticks(source_log.read_text()), 20)
    seen_on_source = _ticks(source_log.read_text())  # read before it leaves, and after
    lab.power_on("et-virt07")  # its boot hook starts the agent the bootstrap installed
    cluster.wait("et-virt07 online", lambda: cluster.hosts()["et-virt07"] == "online")
    cluster.wait(
        "guest3 back on et-virt07", lambda: cluster.services()["guest3"] == ("started", "et-virt07")
    )
    migrate = Job.objects.filter(kind="migrate", params__service="guest3").latest("pk")
    assert migrate.status == JobStatus.SUCCEEDED
    assert migrate.params["target"] == "et-virt07"
    step = migrate.steps.get()  # over TLS, the peer verified by its certificate
    assert step.args["dest_uri"] == f"qemu+tls://{lab.host('et-virt07').address}/system"
    print(f"live migration over TLS: {step.result}")
    assert Job.objects.filter(kind="start", params__service="guest3").count() == starts, "restarted"
    last_on_source = max(seen_on_source + _ticks(source_log.read_text()))
    dest_log = cluster.serial("et-virt07", "guest3")
    time.sleep(1.5)
    after = _ticks(dest_log.read_text())
    # the counter continues on the destination: not rebooted (a reboot starts at 1 again)
    assert after and max(after) > last_on_source
    tail = after[after.index(max(after)) - 1 :] if len(after) > 1 else after
    assert all(t > 1 for t in tail)
    assert cluster.services() == cluster.home()


def test_6_network_cut_no_guest_starts_elsewhere_before_the_fence(cluster: Cluster) -> None:
    lab = cluster.lab
    fences = Job.objects.filter(kind="fence").count()
    lab.net_cut("et-virt06")
    cut_at = time.time()
    assert "guest2" in cluster.running_on("et-virt06")  # a cut cable leaves the guest running
    cluster.wait(
        "guest2 running elsewhere",
        lambda: cluster.services()["guest2"][0] == "started"
        and cluster.services()["guest2"][1] in ("et-virt05", "et-virt07"),
        timeout=40,
    )
    fence = Job.objects.filter(kind="fence").order_by("pk")[fences]
    assert fence.status == JobStatus.SUCCEEDED and fence.params["host"] == "et-virt06"
    start = Job.objects.filter(kind="start", params__service="guest2").latest("pk")
    assert start.created >= fence.finished, "guest2 started before the fence succeeded"
    assert start.created.timestamp() > cut_at
    assert not lab.host("et-virt06").powered_on()
    # bring it back: cable, power; guest2 fails back live
    lab.net_restore("et-virt06")
    lab.power_on("et-virt06")
    cluster.wait("guest2 back home", lambda: cluster.services() == cluster.home(), timeout=40)


def test_7_maintenance_drains_live_and_guests_return(cluster: Cluster) -> None:
    host_id = cluster.host_id("et-virt05")
    starts = Job.objects.filter(kind="start", params__service="guest1").count()
    r = cluster.api.post(f"/api/hosts/{host_id}/maintenance/", {"on": True}, format="json")
    assert r.status_code == 202, r.content
    cluster.wait(
        "guest1 drained off et-virt05",
        lambda: cluster.services()["guest1"][0] == "started"
        and cluster.services()["guest1"][1] != "et-virt05",
    )
    assert "guest1" not in cluster.running_on("et-virt05")
    drain = Job.objects.filter(kind="migrate", params__service="guest1").latest("pk")
    assert drain.status == JobStatus.SUCCEEDED and drain.params["source"] == "et-virt05"
    r = cluster.api.post(f"/api/hosts/{host_id}/maintenance/", {"on": False}, format="json")
    assert r.status_code == 202, r.content
    cluster.wait("guest1 back on et-virt05", lambda: cluster.services() == cluster.home())
    back = Job.objects.filter(kind="migrate", params__service="guest1").latest("pk")
    assert back.pk != drain.pk and back.params["target"] == "et-virt05"
    assert Job.objects.filter(kind="start", params__service="guest1").count() == starts
