"""`python -m agent.shutdown --broker-file FILE --host NAME`: a clean shutdown drains first.

The host's shutdown hook runs this (``/etc/haven/shutdown-NAME.sh``, written by the console's
SSH bootstrap; on systemd hosts the ``ExecStop=`` of ``haven-drain-NAME.service``, which stops
before libvirtd and libvirt-guests, so before anything stops a guest). It tells the console
that the host is shutting down (an ``event`` of kind ``shutdown`` on the host's own inbound
list, the one key its Redis user may write), then waits until no guest runs here any more —
the HA engine live-migrates them away, as for maintenance, and will not fence the host once
it goes quiet — or until ``--timeout`` passes, and returns so the shutdown goes on.

Exit status: 0 drained (no guest left), 1 guests still running at the timeout (libvirt stops
them as it always did), 2 the console could not be told (nothing was waited for). With no
guest left, the host then leaves its shared storage (GFS2 unmounted, lockspaces left) while
the cluster stack still runs, so that its peers see a clean leave, not a host to fence.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence

from agent.protocol import Event
from agent.publisher import RedisSender, Sender
from agent.runner import SubprocessRunner
from agent.storage import LinuxStorage

log = logging.getLogger("agent.shutdown")

DEFAULT_TIMEOUT_S = 300.0


def unit_name(host: str) -> str:
    """The systemd unit whose stop runs the drain (the console's bootstrap installs it; the
    agent orders the GFS2 mounts it writes before it, so they unmount only after the drain)."""
    return f"haven-drain-{host}.service"


def announce(sender: Sender, host: str) -> None:
    """The console's word for "drain me": one ``shutdown`` event from this host."""
    sender.send(
        Event(
            host=host,
            event="shutdown",
            guest="",
            uuid="",
            state="",
            detail="clean shutdown: drain this host by live migration",
        ).to_dict()
    )


def running_guests(uri: str) -> list[str]:
    """The guests active here now (libvirt)."""
    import libvirt

    conn = libvirt.open(uri)
    try:
        return sorted(
            d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        )
    finally:
        conn.close()


def drain(
    host: str,
    sender: Sender,
    guests: Callable[[], list[str]],
    timeout_s: float,
    *,
    interval_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Announce, then wait (bounded) until ``guests()`` is empty; the exit status."""
    try:
        announce(sender, host)
    except Exception as exc:  # no broker: shut down as before, at once
        log.error("could not tell the console that %s shuts down: %s", host, exc)
        return 2
    deadline = clock() + timeout_s
    left = guests()
    while left:
        if clock() >= deadline:
            log.warning("%s: still running after %.0f s: %s", host, timeout_s, ", ".join(left))
            return 1
        log.info("%s: waiting for %s to move away", host, ", ".join(left))
        sleep(interval_s)
        left = guests()
    log.info("%s: no guest left; the shutdown goes on", host)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from agent.__main__ import _broker, _broker_from_file, _host, _uri

    p = argparse.ArgumentParser(prog="python -m agent.shutdown", description=__doc__)
    p.add_argument("--host", type=_host, required=True)
    p.add_argument("--broker-file", type=_broker_from_file, dest="broker", help="the env file")
    p.add_argument("--broker", type=_broker, dest="broker", help="or the URL itself")
    p.add_argument("--libvirt-uri", type=_uri, default="qemu:///system")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds")
    args = p.parse_args(argv)
    if not args.broker:
        p.error("give --broker-file (or --broker)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sender = RedisSender(args.broker, args.host)

    def guests() -> list[str]:
        return running_guests(args.libvirt_uri)

    try:
        status = drain(args.host, sender, guests, args.timeout)
    finally:
        sender.close()
    if status == 0 or not guests():  # (drained: none left, no need to ask again)
        leave_shared_storage(LinuxStorage(SubprocessRunner()))
    return status


def leave_shared_storage(storage: LinuxStorage) -> None:
    """No guest left: the shared storage is left now, before the cluster stack stops (the
    drain unit comes after it, so it still runs; agent/storage.py says why)."""
    for line in storage.leave_shared_storage():
        log.info("shared storage: %s", line)


if __name__ == "__main__":
    sys.exit(main())
