"""The bootstrap's install script (console/bootstrap/ssh.py ``_INSTALL``) run for real on
this machine into a temporary root: a first install makes a venv; a second version starts
from a copy of the first (no new venv: ensurepip takes minutes on a slow host)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from console.bootstrap import ssh as bootstrap


def _install(target: Path, wheels: Path, spec: str, host: str) -> str:
    done = subprocess.run(
        ["sh", "-c", bootstrap._INSTALL, "haven-install", str(target), str(wheels), spec, host],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-1000:]
    return done.stdout


def test_a_second_version_upgrades_a_copy_of_the_newest_install(tmp_path: Path) -> None:
    try:
        version, _ = bootstrap.agent_wheel()
    except bootstrap.BootstrapError as exc:
        pytest.skip(f"no wheelhouse to install from: {exc}")
    wheels = bootstrap.wheelhouse()
    spec = f"haven-agent=={version}"
    assert _install(tmp_path / "v1", wheels, spec, "sv1").strip().splitlines() == ["installed"]
    out = _install(tmp_path / "v2", wheels, spec, "sv2").strip().splitlines()
    assert out == [f"upgraded a copy of {tmp_path / 'v1'}", "installed"]
    # the copy's users are not the new version's: only the host that installed it
    assert sorted(p.name for p in (tmp_path / "v2" / ".users").iterdir()) == ["sv2"]
    assert _install(tmp_path / "v2", wheels, spec, "sv3").strip() == "present"
    assert sorted(p.name for p in (tmp_path / "v2" / ".users").iterdir()) == ["sv2", "sv3"]
    python = tmp_path / "v2" / "bin" / "python"
    where = subprocess.run([str(python), "-c", "import agent, sys; print(sys.prefix)"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert where.stdout.strip() == str(tmp_path / "v2")
    assert not list(tmp_path.glob(".build.*"))  # nothing half-built left behind
