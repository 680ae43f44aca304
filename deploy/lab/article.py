"""The article's cluster on lab hosts, formed through the console's own paths.

Three hosts `et-virt05..07` join cluster `lab` by the SSH bootstrap (root password, pinned host
key, agent installed and started on each host); each gets its BMC as an IPMI fence device
(`fence_ipmilan`, password stored as a secret parameter); `guest1..3` are VM services (the tick
test guest) with one ordered failover domain per host, created through the REST API.

Used by `deploy/quickstart`'s demo (deploy/lab/demo.py) and the end-to-end tests (tests/lab).
Needs Django set up (console settings).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import haven_lab  # noqa: E402

from console.bootstrap import ssh as bootstrap  # noqa: E402
from console.jobs.models import Job  # noqa: E402

CLUSTER = "lab"
HOSTS = haven_lab.DEFAULT_HOSTS
GUESTS = {"guest1": "et-virt05", "guest2": "et-virt06", "guest3": "et-virt07"}


def _render_guest(name: str, kernel: Path, **options: Any) -> str:
    """The tick guest's XML, from deploy/lab/guest/domain-xml (a script, loaded as a module);
    `options`: render()'s (memory_mib, watchdog, panic, on_crash)."""
    import importlib.util
    from importlib.machinery import SourceFileLoader

    loader = SourceFileLoader("haven_domain_xml", str(HERE / "guest" / "domain-xml"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return str(module.render(name, kernel=str(kernel), **options))


def host_specs(lab: haven_lab.Lab, names: tuple[str, ...] = HOSTS) -> list[bootstrap.HostSpec]:
    """What a person types into the wizard: name, address, root password, and the host key
    fingerprint shown by `scan_host_key` (and confirmed)."""
    specs = []
    for name in names:
        host = lab.host(name)
        specs.append(
            bootstrap.HostSpec(
                name=name,
                address=host.address,
                password=host.root_password,
                fingerprint=bootstrap.scan_host_key(host.address),
            )
        )
    return specs


def form_cluster(lab: haven_lab.Lab, actor: Any, names: tuple[str, ...] = HOSTS) -> Job:
    """Bootstrap the hosts over SSH (synchronously); returns the finished bootstrap job."""
    specs = host_specs(lab, names)
    job = bootstrap.create_bootstrap_job(CLUSTER, specs, actor=actor)
    return bootstrap.run_bootstrap(job.pk, {s.name: s.password for s in specs})


def _ok(response: Any) -> dict[str, Any]:
    if response.status_code >= 300:
        raise RuntimeError(f"API {response.status_code}: {response.content[:500]!r}")
    data: dict[str, Any] = response.json()
    return data


def define_fencing_and_guests(api: Any, lab: haven_lab.Lab, kernel: Path) -> None:
    """Fence devices, failover domains and VM services through the REST API (`api` is a DRF
    test client logged in as an admin, or anything with the same post/get)."""
    cluster = next(c for c in _ok(api.get("/api/clusters/"))["results"] if c["name"] == CLUSTER)
    hosts = {h["name"]: h for h in _ok(api.get("/api/hosts/?cluster__name=" + CLUSTER))["results"]}
    for name in HOSTS:
        lab_host = lab.host(name)
        options = lab_host.fence_ipmilan_options()
        password = options.pop("password")
        _ok(
            api.post(
                "/api/fence-devices/",
                {
                    "cluster": cluster["id"],
                    "name": f"ipmi-{name}",
                    "agent": "fence_ipmilan",
                    "host": hosts[name]["id"],
                    "parameters": options,
                    "secret_parameters": {"password": password},
                },
                format="json",
            )
        )
    for guest, home in GUESTS.items():
        domain = _ok(
            api.post(
                "/api/failover-domains/",
                {
                    "cluster": cluster["id"],
                    "name": f"prefer-{home}",
                    "ordered": True,
                    "restricted": False,
                    "nofailback": False,
                    "members": [{"host": hosts[home]["id"], "priority": 1}],
                },
                format="json",
            )
        )
        _ok(
            api.post(
                "/api/services/",
                {
                    "cluster": cluster["id"],
                    "name": guest,
                    "domain_xml": _render_guest(guest, kernel),
                    "failover_domain": domain["id"],
                    "recovery": "restart",
                    "max_restarts": 10,
                    "restart_window_s": 60,
                    "migratable": True,
                },
                format="json",
            )
        )


def build_guest_kernel(root: Path) -> Path:
    """The tick guest's kernel under `root` (built again when its source is newer)."""
    import subprocess

    kernel = root / "tick.elf"
    source = HERE / "guest" / "tick.S"
    if not kernel.exists() or kernel.stat().st_mtime < source.stat().st_mtime:
        subprocess.run([str(HERE / "guest" / "build"), str(root)], check=True, capture_output=True)
    return kernel
