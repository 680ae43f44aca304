"""`haven`: the command line for Haven's REST API (what an admin scripts against).

    haven login http://console:8000 --user admin       # asks the password, keeps a token
    haven services                                      # green/red list, where each runs
    haven migrate guest1 et-virt06 --wait               # live migration, waits for the job
    haven maintenance et-virt05 on
    haven rotate-credentials et-virt05 --wait
    haven add-host lab et-virt08 --address 10.88.0.8 --wait   # shows the host key, asks
    haven remove-host et-virt08 --uninstall --wait      # refused while guests run there
    haven repair-host et-virt06 --wait                  # the SSH bootstrap again

It speaks HTTP to the console with an API token (``~/.config/haven/cli.json``, mode 0600, or
``HAVEN_URL`` and ``HAVEN_TOKEN``), so it runs anywhere and needs only the standard library.
Errors are one line on stderr and exit status 1 (2 for bad usage); never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

CONFIG = Path(os.environ.get("HAVEN_CLI_CONFIG", Path.home() / ".config/haven/cli.json"))
FINISHED = ("succeeded", "failed", "lost")


class CliError(Exception):
    """One line for the person at the terminal."""


class Api:
    def __init__(self, url: str, token: str | None, timeout: float = 15.0) -> None:
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
    ) -> Any:
        url = f"{self.url}/api/{path.lstrip('/')}"
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Token {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise CliError(_http_error(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(f"cannot reach the console at {self.url}: {reason}") from None
        return json.loads(raw) if raw else None

    def all(self, path: str, **query: Any) -> list[dict[str, Any]]:
        page = self.call("GET", path, query={"limit": 500, **query})
        return list(page["results"]) if isinstance(page, dict) and "results" in page else page


def _http_error(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        body = {}
    if isinstance(body, dict) and body:
        parts = []
        for field, value in body.items():
            text = " ".join(value) if isinstance(value, list) else str(value)
            parts.append(text if field in ("detail", "non_field_errors") else f"{field}: {text}")
        return f"{exc.code}: " + "; ".join(parts)
    return f"{exc.code}: {exc.reason}"


def load_config() -> dict[str, str]:
    config: dict[str, str] = {}
    if CONFIG.exists():
        try:
            config = json.loads(CONFIG.read_text())
        except ValueError as exc:
            raise CliError(f"{CONFIG} is not valid JSON: {exc}") from None
    if os.environ.get("HAVEN_URL"):
        config["url"] = os.environ["HAVEN_URL"]
    if os.environ.get("HAVEN_TOKEN"):
        config["token"] = os.environ["HAVEN_TOKEN"]
    return config


def api_from_config() -> Api:
    config = load_config()
    if "url" not in config:
        raise CliError(
            "not logged in: run 'haven login URL --user NAME' (or set HAVEN_URL and HAVEN_TOKEN)"
        )
    return Api(config["url"], config.get("token"))


# --- commands -------------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace, out: TextIO) -> None:
    password = os.environ.get("HAVEN_PASSWORD") or getpass.getpass(f"Password for {args.user}: ")
    api = Api(args.url, None)
    answer = api.call("POST", "token/", {"username": args.user, "password": password})
    CONFIG.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(CONFIG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": args.url.rstrip("/"), "token": answer["token"]}, f)
    out.write(f"logged in to {args.url} as {args.user}\n")


def _table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [list(map(str, header))] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _names(api: Api, path: str) -> dict[int, str]:
    return {o["id"]: o["name"] for o in api.all(path)}


def cmd_clusters(args: argparse.Namespace, out: TextIO) -> None:
    api = api_from_config()
    _table(
        out, ["NAME", "DESCRIPTION"], [(c["name"], c["description"]) for c in api.all("clusters/")]
    )


def cmd_hosts(args: argparse.Namespace, out: TextIO) -> None:
    api = api_from_config()
    rows = [
        (
            h["name"],
            h["state"],
            "yes" if h["maintenance"] else "",
            f"{h['memory_total_mb'] - h['memory_free_mb']}/{h['memory_total_mb']} MiB",
            h["address"],
        )
        for h in api.all("hosts/", cluster__name=args.cluster)
    ]
    _table(out, ["HOST", "STATE", "MAINT", "MEMORY", "ADDRESS"], rows)


def cmd_services(args: argparse.Namespace, out: TextIO) -> None:
    api = api_from_config()
    hosts = _names(api, "hosts/")
    services = api.all("services/", state=args.state)
    rows = [
        (
            s["name"],
            s["state"],
            hosts.get(s["host"], "") if s["host"] else "",
            s["desired_state"],
            s["state_since"] or "",
        )
        for s in services
    ]
    _table(out, ["SERVICE", "STATE", "HOST", "DESIRED", "SINCE"], rows)


def _one(api: Api, path: str, name: str, what: str) -> dict[str, Any]:
    found = api.all(path, name=name)
    if not found:
        raise CliError(f"no {what} named {name!r}")
    if len(found) > 1:
        raise CliError(f"{len(found)} {what}s are named {name!r}; use the API with an id")
    return found[0]


def _job_line(job: dict[str, Any]) -> str:
    line = f"job {job['id']} {job['kind']}: {job['status']} {job['progress']}%"
    return line + (f" — {job['explanation']}" if job.get("explanation") else "")


def _follow(api: Api, job: dict[str, Any], wait: bool, timeout: float, out: TextIO) -> None:
    out.write(_job_line(job) + "\n")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while job["status"] not in FINISHED:
        if time.monotonic() > deadline:
            raise CliError(f"job {job['id']} still {job['status']} after {timeout:g} s")
        time.sleep(0.5)
        job = api.call("GET", f"jobs/{job['id']}/")
    out.write(_job_line(job) + "\n")
    if job["status"] != "succeeded":
        raise CliError(f"job {job['id']} {job['status']}: {job['explanation']}")


def _service_op(kind: str) -> Callable[[argparse.Namespace, TextIO], None]:
    def run(args: argparse.Namespace, out: TextIO) -> None:
        api = api_from_config()
        service = _one(api, "services/", args.service, "service")
        body = {"host": args.host} if kind in ("migrate", "relocate") else None
        job = api.call("POST", f"services/{service['id']}/{kind}/", body)
        _follow(api, job, args.wait, args.timeout, out)

    return run


def cmd_maintenance(args: argparse.Namespace, out: TextIO) -> None:
    api = api_from_config()
    host = _one(api, "hosts/", args.host, "host")
    job = api.call("POST", f"hosts/{host['id']}/maintenance/", {"on": args.state == "on"})
    _follow(api, job, False, 0, out)


def _host_op(path: str) -> Callable[[argparse.Namespace, TextIO], None]:
    def run(args: argparse.Namespace, out: TextIO) -> None:
        api = api_from_config()
        host = _one(api, "hosts/", args.host, "host")
        job = api.call("POST", f"hosts/{host['id']}/{path}/")
        _follow(api, job, getattr(args, "wait", False), getattr(args, "timeout", 0), out)

    return run


def _root_password(args: argparse.Namespace, host: str) -> str:
    """The root password: one line on stdin (``--password-stdin``) or asked (never echoed)."""
    if getattr(args, "password_stdin", False):
        password = sys.stdin.readline().rstrip("\n")
    else:
        try:
            password = getpass.getpass(f"root password of {host}: ")
        except EOFError:
            password = ""
    if not password:
        raise CliError(f"no root password given for {host}")
    return password


def cmd_add_host(args: argparse.Namespace, out: TextIO) -> None:
    """Scan the new host's SSH key, have it confirmed (or match --fingerprint), then the
    bootstrap with its root password."""
    api = api_from_config()
    cluster = _one(api, "clusters/", args.cluster, "cluster")
    address = args.address or args.name
    scanned = api.call(
        "POST", f"clusters/{cluster['id']}/scan-host-key/", {"address": address, "port": args.port}
    )
    fingerprint = str(scanned["fingerprint"])
    out.write(f"{args.name} ({address}:{args.port}) host key {fingerprint}\n")
    if args.fingerprint:
        if args.fingerprint != fingerprint:
            raise CliError(
                f"host key mismatch: expected {args.fingerprint}, the host has {fingerprint}"
            )
    elif not args.yes:
        answer = input("Is this the host's own key (compare on its console)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise CliError("host key not confirmed: nothing was done")
    host = {
        "name": args.name,
        "address": address,
        "port": args.port,
        "password": _root_password(args, args.name),
        "fingerprint": fingerprint,
    }
    body: dict[str, Any] = {"hosts": [host]}
    if args.member:  # shared storage: the corosync key is read on this existing host
        body.update(member=args.member, member_password=_root_password(args, args.member))
    job = api.call("POST", f"clusters/{cluster['id']}/add-hosts/", body)
    _follow(api, job, args.wait, args.timeout, out)


def cmd_remove_host(args: argparse.Namespace, out: TextIO) -> None:
    api = api_from_config()
    host = _one(api, "hosts/", args.host, "host")
    body = {"password": _root_password(args, args.host)} if args.uninstall else {}
    job = api.call("POST", f"hosts/{host['id']}/remove/", body)
    _follow(api, job, args.wait, args.timeout, out)


def cmd_repair_host(args: argparse.Namespace, out: TextIO) -> None:
    api = api_from_config()
    host = _one(api, "hosts/", args.host, "host")
    body: dict[str, Any] = {"password": _root_password(args, args.host)}
    if args.fingerprint:
        body["fingerprint"] = args.fingerprint
    job = api.call("POST", f"hosts/{host['id']}/repair/", body)
    _follow(api, job, args.wait, args.timeout, out)


def cmd_what_if(args: argparse.Namespace, out: TextIO) -> None:
    api = api_from_config()
    host = _one(api, "hosts/", args.host, "host")
    event = "maintenance" if args.maintenance else "power_off"
    p = api.call(
        "POST", f"clusters/{host['cluster']}/what-if/", {"host": args.host, "event": event}
    )
    what = "goes into maintenance" if args.maintenance else "loses power"
    out.write(f"if {p['host']} {what} now (simulated):\n")
    if p["fenced"]:
        out.write(f"  fenced: {', '.join(p['fenced'])}\n")
    out.write(f"  {'SERVICE':<20} {'NOW':<14} {'THEN':<14} {'OUTCOME':<10} {'IN':>7}  WHY\n")
    for g in p["guests"]:
        if g["outcome"] == "stays" and not args.all:
            continue
        took = f"{g['seconds']:.1f}s" if g["seconds"] is not None else ""
        out.write(
            f"  {g['service']:<20} {g['before'] or '-':<14} {g['after'] or '-':<14} "
            f"{g['outcome']:<10} {took:>7}  {g['reason'] if g['outcome'] == 'waits' else ''}\n"
        )
    for note in p["notes"]:
        out.write(f"  {note}\n")


def cmd_policy(args: argparse.Namespace, out: TextIO) -> None:
    api = api_from_config()
    cluster = _one(api, "clusters/", args.cluster, "cluster")
    p = api.call("GET", f"clusters/{cluster['id']}/policy/")
    f = p["failover"]
    out.write(f"failover capacity: {f['summary']}\n")
    if f["worst_hosts"]:
        out.write(f"  worst case: losing {', '.join(f['worst_hosts'])}\n")
    r = p["rebalance"]
    if r is not None:
        out.write(f"rebalancer: {r['stance']}: {r['reason']}\n")
        for m in r["moves"]:
            out.write(
                f"  {m['service']}: {m['from_host']} -> {m['to_host']} "
                f"(memory use {m['source_use']:.0%} -> {m['target_use']:.0%})\n"
            )


def cmd_jobs(args: argparse.Namespace, out: TextIO) -> None:
    api = api_from_config()
    page = api.call("GET", "jobs/", query={"limit": args.limit, "status": args.status})
    for job in page["results"]:
        out.write(_job_line(job) + "\n")


def cmd_events(args: argparse.Namespace, out: TextIO) -> None:
    api = api_from_config()
    page = api.call("GET", "events/", query={"limit": args.limit, "object_name": args.object})
    for e in reversed(page["results"]):
        out.write(
            f"{e['time']}  {e['actor']}  {e['verb']} {e['object_name']}: "
            f"{e['result']} {e['message']}\n".replace("  :", ":")
        )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="haven", description="Haven's command line (REST API).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("login", help="get an API token and keep it in " + str(CONFIG))
    s.add_argument("url", help="the console, e.g. http://127.0.0.1:8000")
    s.add_argument("--user", required=True)
    s.set_defaults(fn=cmd_login)
    sub.add_parser("clusters", help="list clusters").set_defaults(fn=cmd_clusters)
    s = sub.add_parser("hosts", help="list hosts")
    s.add_argument("--cluster", help="only this cluster's hosts")
    s.set_defaults(fn=cmd_hosts)
    s = sub.add_parser("services", help="list VM services with state and host")
    s.add_argument("--state", help="only services in this state (started, failed, ...)")
    s.set_defaults(fn=cmd_services)
    for kind in ("start", "stop", "enable", "disable", "migrate", "relocate"):
        what = {
            "migrate": "live-migrate a guest",
            "relocate": "stop a guest and start it on another host",
        }.get(kind, f"{kind} a VM service")
        s = sub.add_parser(kind, help=what)
        s.add_argument("service")
        if kind in ("migrate", "relocate"):
            s.add_argument("host", help="target host, or 'best'")
        s.add_argument("--wait", action="store_true", help="wait for the job to finish")
        s.add_argument("--timeout", type=float, default=300.0, help="seconds (with --wait)")
        s.set_defaults(fn=_service_op(kind))
    s = sub.add_parser("maintenance", help="drain a host (on) or let it take guests (off)")
    s.add_argument("host")
    s.add_argument("state", choices=("on", "off"))
    s.set_defaults(fn=cmd_maintenance)
    s = sub.add_parser("ack-down", help="confirm a silent host is powered off (manual fence)")
    s.add_argument("host")
    s.set_defaults(fn=_host_op("acknowledge-down"))
    s = sub.add_parser(
        "rotate-credentials",
        help="new broker password and sealing key for a host's agent (admin; over its own "
        "command channel, or the answer says to bootstrap it again over SSH)",
    )
    s.add_argument("host")
    s.add_argument("--wait", action="store_true", help="wait until the agent has them")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds (with --wait)")
    s.set_defaults(fn=_host_op("rotate-credentials"))
    s = sub.add_parser(
        "add-host", help="bootstrap a new host into a cluster over SSH (admin; shows its key)"
    )
    s.add_argument("cluster")
    s.add_argument("name")
    s.add_argument("--address", help="default: the name")
    s.add_argument("--port", type=int, default=22)
    s.add_argument("--fingerprint", help="the host key you expect (else you are asked)")
    s.add_argument("--yes", action="store_true", help="trust the scanned key without asking")
    s.add_argument("--password-stdin", action="store_true", help="read the root password")
    s.add_argument(
        "--member",
        help="shared storage: an existing host whose root password is asked next (a second "
        "line with --password-stdin), to read the cluster's corosync key there",
    )
    s.add_argument("--wait", action="store_true", help="wait for the bootstrap to finish")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds (with --wait)")
    s.set_defaults(fn=cmd_add_host)
    s = sub.add_parser(
        "remove-host",
        help="remove a host from its cluster (admin; refused while guests run there)",
    )
    s.add_argument("host")
    s.add_argument("--uninstall", action="store_true", help="stop and uninstall its agent over SSH")
    s.add_argument("--password-stdin", action="store_true", help="read the root password")
    s.add_argument("--wait", action="store_true", help="wait for the removal to finish")
    s.add_argument("--timeout", type=float, default=120.0, help="seconds (with --wait)")
    s.set_defaults(fn=cmd_remove_host)
    s = sub.add_parser(
        "repair-host", help="run the SSH bootstrap again on a host (keeps guests and history)"
    )
    s.add_argument("host")
    s.add_argument("--fingerprint", help="a new host key to pin (default: the pinned one)")
    s.add_argument("--password-stdin", action="store_true", help="read the root password")
    s.add_argument("--wait", action="store_true", help="wait for the bootstrap to finish")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds (with --wait)")
    s.set_defaults(fn=cmd_repair_host)
    s = sub.add_parser("what-if", help="simulate a host failing now: where every guest goes")
    s.add_argument("host")
    s.add_argument("--maintenance", action="store_true", help="maintenance instead of power loss")
    s.add_argument("--all", action="store_true", help="list the guests that stay, too")
    s.set_defaults(fn=cmd_what_if)
    s = sub.add_parser("policy", help="failover capacity (N+1) and the rebalancer's plan")
    s.add_argument("cluster")
    s.set_defaults(fn=cmd_policy)
    s = sub.add_parser("jobs", help="recent jobs")
    s.add_argument("--status")
    s.add_argument("--limit", type=int, default=20)
    s.set_defaults(fn=cmd_jobs)
    s = sub.add_parser("events", help="the event log, oldest first")
    s.add_argument("--object", help="only events about this object name")
    s.add_argument("--limit", type=int, default=30)
    s.set_defaults(fn=cmd_events)
    return p


def main(
    argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    args = parser().parse_args(argv)
    try:
        args.fn(args, out)
    except CliError as exc:
        err.write(f"haven: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        err.write("haven: interrupted\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
