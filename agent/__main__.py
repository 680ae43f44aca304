"""`python -m agent --broker redis://... --host NAME --libvirt-uri qemu:///system`.

The broker URL holds this agent's own Redis password, so it need not be on the command line
(where `ps` shows it): it may come from the environment (`HAVEN_AGENT_BROKER`) or from a root-only
file (`--broker-file /etc/haven/agent-NAME.env`, a `HAVEN_AGENT_BROKER=...` line), which is what
the console's SSH bootstrap writes. The same file (or `HAVEN_AGENT_SEAL_KEY`) holds the key
that opens the secret arguments the console seals for this host alone (agent/sealing.py).

`HAVEN_SIMULATED_MEMORY_MIB=N` (environment; the bootstrap's `HAVEN_AGENT_ENV` puts it there)
makes the agent report a host of N MiB, free = N minus its active guests' memory, instead of
the machine's: *simulated* capacity, for a lab whose hosts share one machine's memory.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import urllib.parse
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent import __version__, names
from agent.errors import AgentError
from agent.worker import BROKER_ENV, SEAL_KEY_ENV, Agent, Settings

SIMULATED_MEMORY_ENV = "HAVEN_SIMULATED_MEMORY_MIB"
_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_BROKER_SCHEMES = ("redis", "rediss")


def _host(value: str) -> str:
    if not _HOST_RE.match(value):
        raise argparse.ArgumentTypeError(f"invalid host name {value!r} (A-Za-z0-9_.-, max 63)")
    return value


def _broker(value: str) -> str:
    scheme = urllib.parse.urlsplit(value).scheme
    if scheme not in _BROKER_SCHEMES:
        raise argparse.ArgumentTypeError(
            f"invalid broker URL (scheme {scheme!r}): the scheme must be one of "
            f"{', '.join(_BROKER_SCHEMES)}"
        )
    return value


def _file_lines(path: str) -> list[str]:
    try:
        return [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read broker file {path}: {exc.strerror}") from exc


def _file_value(lines: list[str], name: str) -> str | None:
    for line in lines:
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip().strip("'\"")
    return None


def _broker_from_file(path: str) -> str:
    """The broker URL from a file: its `HAVEN_AGENT_BROKER=` line, else its only line."""
    lines = _file_lines(path)
    value = _file_value(lines, BROKER_ENV)
    if value is not None:
        return _broker(value)
    if len(lines) == 1 and "=" not in lines[0].split("://", 1)[0]:
        return _broker(lines[0])
    raise argparse.ArgumentTypeError(f"broker file {path} has no {BROKER_ENV}= line")


def _uri(value: str) -> str:
    try:
        return names.libvirt_uri(value)
    except AgentError as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not 0.01 <= number <= 3600:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds in [0.01, 3600]")
    return number


def _workers(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise argparse.ArgumentTypeError(f"{value!r} is not a worker count in [1, 64]")
    return int(value)


def _path_list(value: str) -> tuple[Path, ...]:
    return tuple(Path(p) for p in value.split(":") if p)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m agent",
        description="Haven host agent: a Celery worker consuming only the queue agent.HOST; "
        "runs the console's commands (libvirt, LVM, GFS2, fencing) and pushes results, "
        "lifecycle events and heartbeats onto its own inbound list haven:in:HOST.",
    )
    broker = p.add_mutually_exclusive_group()
    broker.add_argument(
        "--broker",
        "--console-broker",
        dest="broker",
        type=_broker,
        help="Celery broker URL of the console, e.g. redis://10.88.0.254:6379/0 "
        f"(default: ${BROKER_ENV})",
    )
    broker.add_argument(
        "--broker-file",
        dest="broker_file",
        help=f"root-only file holding {BROKER_ENV}=URL (keeps the password off the command line) "
        f"and {SEAL_KEY_ENV}=KEY (opens the secrets the console seals for this host; default: "
        f"${SEAL_KEY_ENV})",
    )
    p.add_argument(
        "--host",
        required=True,
        type=_host,
        help="this host's name as the console knows it; the agent consumes queue agent.HOST",
    )
    p.add_argument(
        "--libvirt-uri",
        default="qemu:///system",
        type=_uri,
        help="libvirt connection URI of this host's hypervisor (default: %(default)s)",
    )
    p.add_argument(
        "--heartbeat-interval",
        default=1.0,
        type=_positive,
        help="seconds between heartbeats (default: %(default)s)",
    )
    p.add_argument(
        "--workers",
        default=4,
        type=_workers,
        help="commands that may run at once; commands for one guest never overlap "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--fence-path",
        default="/usr/sbin:/usr/bin:/usr/local/sbin",
        type=_path_list,
        help="colon-separated directories searched for fence_* agents (default: %(default)s)",
    )
    p.add_argument(
        "--fstab",
        default=Path("/etc/fstab"),
        type=Path,
        help="fstab file that fstab_entry edits (default: %(default)s)",
    )
    p.add_argument(
        "--libvirt-config-dir",
        default=Path("/etc/libvirt"),
        type=Path,
        help="directory holding libvirtd.conf and qemu.conf for configure_migration "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--pki-dir",
        default=Path("/etc/pki"),
        type=Path,
        help="libvirt's TLS files for migration over qemu+tls: CA/cacert.pem, "
        "libvirt/{server,client}cert.pem, libvirt/private/ (default: %(default)s, where "
        "libvirt's client side looks)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default: %(default)s); command arguments and secrets are never logged",
    )
    p.add_argument("--version", action="version", version=f"haven-agent {__version__}")
    return p


def settings_from_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    p = parser()
    args = p.parse_args(argv)
    env = os.environ if environ is None else environ
    broker, seal_key = args.broker, env.get(SEAL_KEY_ENV) or None
    if args.broker_file is not None:
        try:
            broker = _broker_from_file(args.broker_file)
            seal_key = _file_value(_file_lines(args.broker_file), SEAL_KEY_ENV) or seal_key
        except argparse.ArgumentTypeError as exc:
            p.error(f"argument --broker-file: {exc}")
    if broker is None:
        if not env.get(BROKER_ENV):
            p.error(f"give --broker, --broker-file or ${BROKER_ENV}")
        try:
            broker = _broker(env[BROKER_ENV])
        except argparse.ArgumentTypeError as exc:
            p.error(f"${BROKER_ENV}: {exc}")
    memory: int | None = None
    raw_memory = env.get(SIMULATED_MEMORY_ENV)
    if raw_memory:
        if not raw_memory.isdigit() or not 64 <= int(raw_memory) <= 2**24:
            p.error(f"${SIMULATED_MEMORY_ENV}: {raw_memory!r} is not a MiB count in [64, 2^24]")
        memory = int(raw_memory)
    return Settings(
        memory_mib=memory,
        broker=broker,
        host=args.host,
        libvirt_uri=args.libvirt_uri,
        heartbeat_interval_s=args.heartbeat_interval,
        workers=args.workers,
        fence_path=args.fence_path,
        fstab=args.fstab,
        libvirt_config_dir=args.libvirt_config_dir,
        pki_dir=args.pki_dir,
        log_level=args.log_level,
        seal_key=seal_key,
        broker_file=Path(args.broker_file) if args.broker_file else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = settings_from_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s",
    )
    # kombu/celery at DEBUG would log message bodies, which may hold fence credentials.
    for noisy in ("kombu", "celery", "amqp"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
    # The agent must be root (libvirt, LVM, mount); Celery's warning about that is noise here.
    warnings.filterwarnings("ignore", message=".*superuser privileges.*")
    Agent(settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
