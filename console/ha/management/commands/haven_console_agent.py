"""`manage.py haven_console_agent --env-file var/console-agent.env`: a broker login and a sealing
key for the agent that runs beside the console (``HAVEN_CONSOLE_AGENT``, the fence runner of
last resort), written to a 0600 file for ``python -m agent --broker-file``. Each run issues new
ones (the old login stops working)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from console.bootstrap import ssh as bootstrap
from console.ha import credentials


class Command(BaseCommand):
    help = "Issue the console's own agent its Redis user and sealing key, into an env file."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--env-file", required=True, type=Path)

    def handle(self, *args: Any, **options: Any) -> None:
        name = settings.HAVEN_CONSOLE_AGENT
        issued = credentials.issue(name)
        text = bootstrap.agent_env_file(
            name,
            bootstrap.agent_broker_url(issued.user, issued.password),
            {},
            seal_key=issued.seal_key,
        )
        path: Path = options["env_file"]
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        tmp.replace(path)
        self.stdout.write(f"{name}: Redis user {issued.user}, configuration in {path}")
