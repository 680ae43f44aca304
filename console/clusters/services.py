"""Writes to clusters and fence devices that have rules of their own (atomic, recorded in the
event log); the API and the pages both call these, so both refuse the same things."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from console.clusters.models import Cluster, FenceDevice, Host
from console.core.errors import Refused
from console.core.services import actor_name, delete_unused
from console.events.services import record
from console.jobs import services as jobs
from console.jobs.models import Job


def delete_cluster(cluster: Cluster, *, actor: Any) -> None:
    """Delete a cluster; refused (409) while it has hosts (nothing is deleted by cascade)."""
    hosts = sorted(cluster.hosts.values_list("name", flat=True))
    one = len(hosts) == 1
    delete_unused(
        cluster,
        hosts,
        actor=actor,
        reason=f"still has hosts {', '.join(hosts)}",
        refusal=f"Cluster {cluster.name} still has {'host' if one else 'hosts'} "
        f"{', '.join(hosts)}: remove {'it' if one else 'them'} first.",
    )


def fence_test(cluster: Cluster, device: FenceDevice, *, actor: Any) -> Job:
    """Run the device's agent with ``action=status`` from another host of the cluster: proves
    address and secrets without powering anything. The device must be one of the cluster's."""
    if device.cluster_id != cluster.pk:
        raise Refused(
            f"Fence device {device.name} is not a device of cluster {cluster.name}.",
            status=404,
        )
    from console.ha.actions import fence_runner, fence_step

    online = set(
        Host.objects.filter(cluster=cluster, state="online").values_list("name", flat=True)
    )
    runner = fence_runner(cluster, device.host.name, online)
    with transaction.atomic():
        job = jobs.create_job(
            "fence-test",
            [fence_step(device, runner, "status")],
            cluster=cluster,
            created_by=actor,
            params={"device": device.name, "host": device.host.name, "action": "status"},
            message=f"test {device.name}: status of {device.host.name}",
        )
        record(
            actor=actor_name(actor),
            verb="fence-test",
            obj=device,
            cluster=cluster,
            result="info",
            message=f"status test requested (job {job.pk})",
        )
    return job
