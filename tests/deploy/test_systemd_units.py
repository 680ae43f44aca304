"""deploy/systemd: every console process is a unit restarted whenever it exits, the target
starts them all, Redis keeps its append-only file, and systemd-analyze accepts every unit
(paths under /opt/haven are pointed at this checkout for the check)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
PROCESSES = {"worker@", "beat", "ingest", "console-agent", "web", "redis"}


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def test_every_console_process_is_restarted_whenever_it_exits() -> None:
    services = {
        p.name.removeprefix("haven-").removesuffix(".service"): p for p in UNITS.glob("*.service")
    }
    assert set(services) == PROCESSES
    wants = _unit(UNITS / "haven.target")["Unit"]["Wants"].split()
    for name, path in services.items():
        unit = _unit(path)
        assert unit["Service"]["Restart"] == "always", name
        assert unit["Unit"]["StartLimitIntervalSec"] == "0", name  # never gives up
        instances = (
            [f"haven-{name}1.service", f"haven-{name}2.service"]
            if name.endswith("@")
            else [path.name]
        )
        assert all(i in wants for i in instances), name
    redis = _unit(services["redis"])["Service"]["ExecStart"]
    assert "--appendonly yes" in redis and "--appendfsync everysec" in redis


def test_systemd_analyze_accepts_the_units(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    for path in UNITS.iterdir():
        (tmp_path / path.name).write_text(path.read_text().replace("/opt/haven", str(ROOT)))
    names = [
        "haven-worker@1.service" if p.name == "haven-worker@.service" else p.name
        for p in sorted(tmp_path.iterdir())
        if p.suffix in (".service", ".target")
    ]
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        done.stdout + done.stderr
    )
