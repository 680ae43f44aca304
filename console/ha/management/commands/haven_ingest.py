"""`manage.py haven_ingest`: the ingest drainer (console/ha/drain.py), until SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand

from console.ha.drain import Drainer


class Command(BaseCommand):
    help = "Take the agents' heartbeats, events and results off their inbound lists in Redis."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--workers",
            type=int,
            default=4,
            help="threads applying results and running backup ticks (default: %(default)s)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        drainer = Drainer(workers=max(1, int(options["workers"])))
        try:
            drainer.run(stop)
        finally:
            drainer.close(wait=True)
