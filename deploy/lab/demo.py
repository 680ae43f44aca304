#!/usr/bin/env python3
"""The quickstart's demo: the article's cluster on three lab hosts, formed by the console.

    .venv/bin/python deploy/lab/demo.py        (run by deploy/quickstart, as root)

Starts lab hosts et-virt05..07, forms cluster `lab` through the console's SSH bootstrap (each
host's root password, its pinned host key; the agent installed from the wheelhouse and started
on the host), registers each host's BMC as an IPMI fence device and defines guest1..3 with one
failover domain per host, through the REST API. Then waits until every service is green and
prints the service list. The console's worker and beat must already run (deploy/quickstart
starts them first) with REDIS_URL pointing at a Redis the lab hosts reach on the bridge.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")


def main() -> int:
    import django

    django.setup()
    import article
    import haven_lab
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    from console.services.models import VmService

    lab = haven_lab.Lab()
    started = time.monotonic()
    print("demo: starting lab hosts " + ", ".join(article.HOSTS))
    lab.create(article.HOSTS)
    kernel = article.build_guest_kernel(lab.root)
    # Always through the bootstrap: a re-created lab has new host keys and passwords, and each
    # agent gets fresh Redis credentials.
    print("demo: forming cluster lab over SSH (root password, pinned host key) ...")
    job = article.form_cluster(lab, actor="quickstart-demo")
    for event in job.events.order_by("seq"):
        print(f"  {event.message}")
    if job.status != "succeeded":
        print(f"demo: the bootstrap failed: {job.explanation}", file=sys.stderr)
        return 1
    if not VmService.objects.filter(cluster__name=article.CLUSTER).exists():
        admin = (
            User.objects.filter(is_superuser=True).order_by("pk").first()
            or User.objects.filter(groups__name="admin").order_by("pk").first()
        )
        if admin is None:
            print("demo: no admin user (manage.py haven_admin)", file=sys.stderr)
            return 1
        api = APIClient()
        api.force_authenticate(admin)
        article.define_fencing_and_guests(api, lab, kernel)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        services = list(VmService.objects.select_related("host").order_by("name"))
        if services and all(s.state == "started" for s in services):
            break
        time.sleep(0.5)
    print(f"demo: ready in {time.monotonic() - started:.1f} s — the article's service list:")
    print(f"  {'SERVICE':<8} {'STATE':<10} HOST")
    for s in VmService.objects.select_related("host").order_by("name"):
        print(f"  {s.name:<8} {s.state:<10} {s.host.name if s.host else '-'}")
    print(
        "demo: try `deploy/lab/labctl power-off et-virt07` (fenced through its BMC, guest3 "
        "restarts elsewhere, then the host reboots and guest3 migrates back live)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
