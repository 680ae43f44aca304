"""A stand-in for ``console.bootstrap.ssh`` with the same interface, for the wizard's
tests: host keys come from a table, and the job gets the real step kinds per host.

The test decides how each step ends (``finish``), as the SSH bootstrap would report it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction

from console.clusters.models import Cluster, Host
from console.jobs import services as jobs
from console.jobs.models import Job
from tests.console.factories import sealing_key

STEP_KINDS = ("bootstrap.connect", "bootstrap.install", "bootstrap.configure", "bootstrap.register")


class BootstrapError(Exception):
    pass


@dataclass
class HostSpec:
    name: str
    address: str
    password: str
    fingerprint: str
    port: int = 22


class FakeBootstrap:
    BootstrapError = BootstrapError
    HostSpec = HostSpec

    def __init__(self, keys: dict[str, str] | None = None) -> None:
        self.keys = keys or {}
        self.calls: list[tuple[str, list[HostSpec], bool]] = []

    def scan_host_key(self, address: str, port: int = 22, timeout: float = 5) -> str:
        if address not in self.keys:
            raise BootstrapError(f"{address}:{port} is unreachable (connection timed out)")
        return self.keys[address]

    def start_bootstrap(
        self,
        cluster_name: str,
        hosts: list[HostSpec],
        *,
        actor: Any,
        shared_storage: bool = False,
        join: Any = None,
        then: Any = None,
    ) -> Job:
        self.calls.append((cluster_name, hosts, shared_storage))
        with transaction.atomic():
            cluster = Cluster.objects.create(name=cluster_name)
            rows = [
                Host.objects.create(
                    cluster=cluster, name=h.name, address=h.address, ssh_fingerprint=h.fingerprint
                )
                for h in hosts
            ]
            for host in rows:
                sealing_key(host.name)  # as the configure step gives each agent its key
            steps = [
                jobs.StepSpec(host, kind, {"host": host.name}, stage=stage)
                for stage, kind in enumerate(STEP_KINDS)
                for host in rows
            ]
            return jobs.create_job(
                "bootstrap",
                steps,
                cluster=cluster,
                created_by=actor,
                params={"cluster": cluster_name, "shared_storage": shared_storage},
            )
