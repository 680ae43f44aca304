"""Turn the engine's actions into job steps for the agents."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from agent import protocol
from console import engine
from console.clusters.models import Cluster, FenceDevice, Host
from console.ha.snapshot import engine_settings
from console.jobs.services import StepSpec
from console.services.models import VmService

#: the shortest time a fence level is given when several share the engine's wait
FENCE_LEVEL_MIN_TIMEOUT_S = 5.0


def libvirt_uri(host: Host) -> str:
    """Where other hosts migrate to ``host``: its own URI when a person set one, else over TLS
    once the bootstrap installed its certificate (console/bootstrap/pki.py), else plain TCP."""
    if host.libvirt_uri:
        return host.libvirt_uri
    scheme = "qemu+tls" if host.tls_certificate else "qemu+tcp"
    return f"{scheme}://{host.address}/system"


def _start(
    service: VmService, host: Host, stage: int = 0, *, resume: bool = False
) -> list[StepSpec]:
    """Define the console's copy of the XML (with the health checks in its metadata), then
    start it: nobody copies config files. `resume`: resume the state saved on that host;
    otherwise a saved state there is dropped and the guest boots afresh."""
    return [
        StepSpec.of(host, protocol.DefineArgs(service.defined_xml()), stage=stage),
        StepSpec.of(host, protocol.StartArgs(service.name, resume=resume), stage=stage + 1),
    ]


def _stop(service: str, host: Host, *, force: bool, save: bool = False) -> StepSpec:
    if force:
        return StepSpec.of(host, protocol.DestroyArgs(service))
    timeout_s = float(settings.HAVEN_STOP_TIMEOUT_S)
    return StepSpec.of(host, protocol.ShutdownArgs(service, timeout_s, save=save))


def fence_runner(cluster: Cluster, target: str, online: set[str]) -> Host | None:
    """A healthy host of the cluster to run the fence agent; None = the console's own agent."""
    candidates = sorted(n for n in online if n != target)
    if not candidates:
        return None
    return Host.objects.get(cluster=cluster, name=candidates[0])


def fence_levels(host: Host) -> list[FenceDevice]:
    """The host's fence devices, level by level: tried in ``order`` (then name)."""
    return list(FenceDevice.objects.filter(host=host).order_by("order", "name"))


def fence_step(
    device: FenceDevice,
    runner: Host | None,
    action: str,
    *,
    stage: int = 0,
    timeout_s: float = 60.0,
    require_power: str | None = None,
) -> StepSpec:
    """One run of the device's agent (its secrets are read when the step is sent);
    ``require_power``: succeed only if the host's power is in this state (a status query)."""
    params: dict[str, object] = dict(device.parameters)
    if device.plug:
        params["plug"] = device.plug
    args = protocol.FenceArgs(device.agent, action, params, float(timeout_s), require_power)
    return StepSpec.of(runner, args, stage=stage, secret_ref={"fence_device": device.pk})


def fence_steps(
    devices: list[FenceDevice], runner: Host | None, *, query: bool = False
) -> list[StepSpec]:
    """Fence with the devices level by level, one stage each (the job's stages are
    alternatives: the first level that works ends it); `query`: ask each device's power state
    instead, and succeed only if the host is off (the engine's FenceStatus after a lost fence
    result). Every level gets an equal share of the engine's wait for the fence's result, so a
    level that hangs leaves time for the next."""
    share = engine_settings().fence_timeout_s / max(1, len(devices))
    timeout_s = max(FENCE_LEVEL_MIN_TIMEOUT_S, min(60.0, share)) if len(devices) > 1 else 60
    return [
        fence_step(
            device,
            runner,
            "status" if query else settings.HAVEN_FENCE_ACTION,
            stage=stage,
            timeout_s=timeout_s,
            require_power="off" if query else None,
        )
        for stage, device in enumerate(devices)
    ]


def steps_for(
    action: engine.Action,
    *,
    cluster: Cluster,
    hosts: dict[str, Host],
    services: dict[str, VmService],
    online: set[str],
) -> tuple[str, list[StepSpec], dict[str, Any]]:
    """(job kind, steps, params) for one action."""
    if isinstance(action, engine.Fence | engine.FenceStatus):
        query = isinstance(action, engine.FenceStatus)
        devices = fence_levels(hosts[action.host])
        if not devices:  # the engine only fences hosts that have a device
            return "fence", [], {"host": action.host}
        runner = fence_runner(cluster, action.host, online)
        return (
            "fence",
            fence_steps(devices, runner, query=query),
            {
                "host": action.host,
                "device": ", ".join(d.name for d in devices),
                # several levels: tried in order, the first that works ends the job
                **({"alternatives": [d.name for d in devices]} if len(devices) > 1 else {}),
                "runner": runner.name if runner else settings.HAVEN_CONSOLE_AGENT,
                **({"query": "status"} if query else {}),
            },
        )
    service = services[action.service]
    if isinstance(action, engine.Start):
        return (
            "start",
            _start(service, hosts[action.host], resume=action.resume),
            {
                "service": action.service,
                "host": action.host,
                **({"resume": True} if action.resume else {}),
            },
        )
    if isinstance(action, engine.Stop):
        # A stray copy or a hung guest is destroyed at once; others shut down (or are saved).
        steps = [_stop(action.service, hosts[action.host], force=action.force, save=action.save)]
        params: dict[str, Any] = {
            "service": action.service,
            "host": action.host,
            "reason": action.reason.value,
        }
        if action.reason is engine.StopReason.PREEMPT and not action.save:
            params["not_saved"] = service.save_refusal()
        return "stop", steps, params
    if isinstance(action, engine.Migrate):
        target = hosts[action.target]
        return (
            "migrate",
            [
                StepSpec.of(
                    hosts[action.source], protocol.MigrateArgs(action.service, libvirt_uri(target))
                )
            ],
            {"service": action.service, "source": action.source, "target": action.target},
        )
    assert isinstance(action, engine.Relocate)
    stop = _stop(action.service, hosts[action.source], force=False)
    return (
        "relocate",
        [stop, *_start(service, hosts[action.target], stage=1)],
        {"service": action.service, "source": action.source, "target": action.target},
    )
