"""One factory per model (factory_boy); each builds a valid object with unique names."""

from __future__ import annotations

from typing import Any

import factory

from console.clusters.models import Cluster, FenceDevice, Host
from console.jobs.models import Job, JobEvent
from console.services.models import FailoverDomain, FailoverDomainMember, VmService
from console.storage.models import BlockDevice, Filesystem, LogicalVolume, VolumeGroup


def domain_xml(name: str, memory_kib: int = 32768, vcpus: int = 1) -> str:
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='KiB'>{memory_kib}</memory>"
        f"<vcpu>{vcpus}</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
    )


def test_driver_xml(name: str) -> str:
    """A domain that libvirt's test driver (test:///default: the live suites' agents) runs."""
    return (
        f"<domain type='test'><name>{name}</name><memory unit='KiB'>1024</memory><vcpu>1</vcpu>"
        "<os><type>hvm</type></os></domain>"
    )


class ClusterFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Cluster

    name = factory.Sequence(lambda n: f"cl{n}")


class HostFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Host

    cluster = factory.SubFactory(ClusterFactory)
    name = factory.Sequence(lambda n: f"et-virt{n:02d}")
    address = factory.Sequence(lambda n: f"10.88.0.{n % 250 + 1}")


class FenceDeviceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = FenceDevice

    host = factory.SubFactory(HostFactory)
    cluster = factory.SelfAttribute("host.cluster")
    name = factory.Sequence(lambda n: f"ipmi{n}")
    agent = "fence_ipmilan"
    parameters = factory.LazyFunction(lambda: {"ip": "10.88.0.254", "username": "admin"})


class FailoverDomainFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = FailoverDomain

    cluster = factory.SubFactory(ClusterFactory)
    name = factory.Sequence(lambda n: f"domain{n}")


class FailoverDomainMemberFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = FailoverDomainMember

    domain = factory.SubFactory(FailoverDomainFactory)
    host = factory.SubFactory(HostFactory, cluster=factory.SelfAttribute("..domain.cluster"))
    priority = 1


class VmServiceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = VmService

    cluster = factory.SubFactory(ClusterFactory)
    name = factory.Sequence(lambda n: f"guest{n}")
    domain_xml = factory.LazyAttribute(lambda o: domain_xml(o.name))


class BlockDeviceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = BlockDevice

    host = factory.SubFactory(HostFactory)
    path = factory.Sequence(lambda n: f"/dev/sd{chr(ord('b') + n % 24)}{n}")
    size_bytes = 10 * 1024**3


class VolumeGroupFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = VolumeGroup

    cluster = factory.SubFactory(ClusterFactory)
    name = factory.Sequence(lambda n: f"vg{n}")


class LogicalVolumeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = LogicalVolume

    volume_group = factory.SubFactory(VolumeGroupFactory)
    name = factory.Sequence(lambda n: f"lv{n}")
    size_bytes = 1024**3


class FilesystemFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Filesystem

    logical_volume = factory.SubFactory(LogicalVolumeFactory)
    name = factory.Sequence(lambda n: f"fs{n}")
    mount_point = factory.Sequence(lambda n: f"/mnt/fs{n}")
    journals = 3


class JobFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Job

    kind = "start"
    cluster = factory.SubFactory(ClusterFactory)


class JobEventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = JobEvent

    job = factory.SubFactory(JobFactory)
    seq = factory.Sequence(lambda n: n + 1)
    message = "step done"


def half_full_hosts(cluster: Cluster, cpus: int | None = None) -> tuple[Host, Host]:
    """Hosts h1 and h2 of ``cluster`` (online, 8 GiB; h1 with ``cpus``), each running a 4 GiB
    guest (big1, big2): admission control's tight case, one more 2 GiB guest breaks N+1."""
    first = {} if cpus is None else {"cpus": cpus}
    a = HostFactory(cluster=cluster, name="h1", state="online", memory_total_mb=8192, **first)
    b = HostFactory(cluster=cluster, name="h2", state="online", memory_total_mb=8192)
    for name, host in (("big1", a), ("big2", b)):
        VmServiceFactory(
            cluster=cluster,
            name=name,
            state="started",
            host=host,
            domain_xml=domain_xml(name, memory_kib=4096 * 1024),
        )
    return a, b


def domains_world(
    *, fenced: tuple[str, ...], web_on: str, prefer7: tuple[str, ...], db_priority: int = 0
) -> dict[str, Any]:
    """Cluster "et" of et-virt05..07 (online, 4 GiB), fence devices on the ``fenced`` hosts;
    "licensed" on et-virt05 in "only5" (restricted to et-virt05), "db" on et-virt07 in the
    ordered "prefer7" (the ``prefer7`` hosts, first preferred), "web" on ``web_on`` (no
    domain): the what-if and dry-run tests' cluster."""
    cluster = ClusterFactory(name="et")
    hosts = {
        n: HostFactory(cluster=cluster, name=n, state="online", memory_total_mb=4096)
        for n in ("et-virt05", "et-virt06", "et-virt07")
    }
    for name in fenced:
        FenceDeviceFactory(cluster=cluster, host=hosts[name], name=f"ipmi-{name}")
    only5 = FailoverDomainFactory(cluster=cluster, name="only5", restricted=True)
    FailoverDomainMemberFactory(domain=only5, host=hosts["et-virt05"], priority=1)
    domain = FailoverDomainFactory(cluster=cluster, name="prefer7", ordered=True)
    for priority, name in enumerate(prefer7, start=1):
        FailoverDomainMemberFactory(domain=domain, host=hosts[name], priority=priority)
    VmServiceFactory(cluster=cluster, name="web", state="started", host=hosts[web_on])
    for name, on, member_of, priority in (
        ("licensed", "et-virt05", only5, 0),
        ("db", "et-virt07", domain, db_priority),
    ):
        VmServiceFactory(
            cluster=cluster,
            name=name,
            state="started",
            host=hosts[on],
            failover_domain=member_of,
            priority=priority,
        )
    return {"cluster": cluster, "hosts": hosts, "only5": only5, "prefer7": domain}


def sealing_key(name: str) -> str:
    """Give agent ``name`` a sealing key as the bootstrap does (without a Redis user); the key."""
    from cryptography.fernet import Fernet

    from console.core import crypto
    from console.ha.models import AgentCredential

    key = Fernet.generate_key().decode()
    AgentCredential.objects.update_or_create(
        name=name,
        defaults={
            "password_sha256": "0" * 64,
            "seal_key_encrypted": crypto.encrypt_json({"key": key}),
        },
    )
    return key


def fence_payload(**over: Any) -> dict[str, Any]:
    """The body of a new fence device for the API, for a new host of a new cluster."""
    host = HostFactory()
    return {
        "cluster": host.cluster.pk,
        "name": "bmc1",
        "agent": "fence_ipmilan",
        "host": host.pk,
        **over,
    }


def recording_fence(host: Host, record: object) -> FenceDevice:
    """``rec-<host>``: the test fence agent ``fence_haven_record``, which appends each call to
    the file ``record`` (the live suites read who was fenced from it)."""
    return FenceDeviceFactory(
        host=host,
        cluster=host.cluster,
        name=f"rec-{host.name}",
        agent="fence_haven_record",
        plug=host.name,
        parameters={"record": str(record)},
    )


def service_preferring(host: Host) -> VmService:
    """``vm-<host>``, preferring ``host`` (an ordered failover domain ``prefer-<host>`` of its
    own), with a definition libvirt's test driver runs."""
    cluster = host.cluster
    domain = FailoverDomainFactory(cluster=cluster, name=f"prefer-{host.name}", ordered=True)
    FailoverDomainMemberFactory(domain=domain, host=host, priority=1)
    name = f"vm-{host.name}"
    return VmServiceFactory(
        cluster=cluster, name=name, failover_domain=domain, domain_xml=test_driver_xml(name)
    )


def article_hosts(cluster: Cluster) -> list[Host]:
    """et-virt05..07 of the article, online, 4096 MiB each with 3000 free."""
    return [
        HostFactory(
            cluster=cluster,
            name=f"et-virt0{i}",
            state="online",
            memory_total_mb=4096,
            memory_free_mb=3000,
        )
        for i in (5, 6, 7)
    ]
