#!/usr/bin/env python3
"""The agent's wheelhouse: everything a host needs to run the agent, without internet there.

    deploy/wheelhouse.py [--dest var/wheelhouse] [--agent-only]

`var/wheelhouse/` holds the wheels of the agent's requirements (pinned in pyproject.toml,
fetched once by `pip wheel` at setup time, when the console machine has a package index) and a
wheel of the `agent` package itself, built here from the source tree without any build tool.
The console's SSH bootstrap uploads the directory and runs `pip install --no-index
--find-links` on the host (console/bootstrap/ssh.py).

The agent wheel's version is `<agent.__version__>+<hash of the agent's sources>`, so a changed
agent installs into a new `/opt/haven-agent/<version>/` instead of being mistaken for the old one.
`--agent-only` rebuilds just that wheel (no network) and prints the version.

Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DEST = REPO / "var" / "wheelhouse"
DIST = "haven_agent"
# The agent's own requirements, by distribution name, with the pins of pyproject.toml.
AGENT_REQUIREMENTS = ("celery", "redis", "libvirt-python", "packaging", "cryptography")
ZIP_DATE = (2020, 1, 1, 0, 0, 0)  # fixed: the same sources give the same wheel
# Wheels the hosts' Python may need but this machine's does not: `pip wheel` resolves the
# environment markers for the Python running it, and redis needs async-timeout only below
# 3.11.3 (Debian 12's own Python is 3.11.2; without it the agent does not install there).
HOST_PYTHON_EXTRAS = ("async-timeout>=4.0.3",)


def requirement_pins(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The pinned requirement lines of pyproject.toml that the agent needs."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = []
    for dep in deps:
        name = re.split(r"[\[=<>~! ]", dep, maxsplit=1)[0].lower()
        if name in AGENT_REQUIREMENTS:
            pins.append(dep.split(";")[0].strip())
    return pins


def agent_sources(repo: Path = REPO) -> list[Path]:
    return sorted(p for p in (repo / "agent").rglob("*.py") if "__pycache__" not in p.parts)


def agent_version(repo: Path = REPO) -> str:
    """`0.1.0+<10 hex>`: the agent's declared version plus a hash of its sources."""
    init = (repo / "agent" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', init, re.M)
    if match is None:
        raise SystemExit("agent/__init__.py has no __version__")
    digest = hashlib.sha256()
    for path in agent_sources(repo):
        digest.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{match.group(1)}+{digest.hexdigest()[:10]}"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_agent_wheel(dest: Path, repo: Path = REPO) -> Path:
    """Write `haven_agent-<version>-py3-none-any.whl` into dest (a pure-Python wheel)."""
    version = agent_version(repo)
    dist_info = f"{DIST}-{version}.dist-info"
    requires = "".join(
        f"Requires-Dist: {pin}\n" for pin in requirement_pins(repo / "pyproject.toml")
    )
    files: list[tuple[str, bytes]] = [
        (str(p.relative_to(repo)), p.read_bytes()) for p in agent_sources(repo)
    ]
    files.append(
        (
            f"{dist_info}/METADATA",
            (
                f"Metadata-Version: 2.1\nName: haven-agent\nVersion: {version}\n"
                f"Summary: Haven host agent\nRequires-Python: >=3.11\n{requires}"
            ).encode(),
        )
    )
    files.append(
        (
            f"{dist_info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: haven-wheelhouse\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n",
        )
    )
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files)
    record += f"{dist_info}/RECORD,,\n"
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob(f"{DIST}-*.whl"):
        old.unlink()
    wheel = dest / f"{DIST}-{version}-py3-none-any.whl"
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in [*files, (f"{dist_info}/RECORD", record.encode())]:
            info = zipfile.ZipInfo(name, ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    tmp.replace(wheel)
    (dest / "AGENT_VERSION").write_text(version + "\n")
    return wheel


def fetch_requirements(dest: Path) -> None:
    """`pip wheel` the pinned requirements (and their dependencies) into dest."""
    pins = [*requirement_pins(), *HOST_PYTHON_EXTRAS]
    stamp = dest / ".requirements"
    if stamp.exists() and stamp.read_text() == "\n".join(pins):
        return
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]
    proc = subprocess.run([*pip, "-w", str(dest), *pins], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"wheelhouse: pip wheel failed:\n{proc.stderr[-2000:]}")
    stamp.write_text("\n".join(pins))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    parser.add_argument("--agent-only", action="store_true", help="rebuild only the agent wheel")
    args = parser.parse_args(argv)
    if not args.agent_only:
        fetch_requirements(args.dest)
    build_agent_wheel(args.dest)
    print(agent_version())
    return 0


if __name__ == "__main__":
    sys.exit(main())
