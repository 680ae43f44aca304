"""The command line: documented options, exit 2 with a message on bad ones."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.__main__ import parser

from .conftest import REPO


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], cwd=REPO, capture_output=True, text=True, timeout=30
    )


def test_help_documents_every_option() -> None:
    out = run("--help")
    assert out.returncode == 0
    for action in parser()._actions:
        for flag in action.option_strings:
            assert flag in out.stdout
        if action.option_strings and action.dest != "help":
            assert action.help, action.dest


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "required"),
        (["--broker", "redis://x", "--host", "a b"], "invalid host name"),
        (["--broker", "http://x", "--host", "h"], "invalid broker URL"),
        (["--broker", "redis://x", "--host", "h", "--heartbeat-interval", "0"], "seconds"),
        (["--broker", "redis://x", "--host", "h", "--workers", "zero"], "worker count"),
        (
            ["--broker", "redis://x", "--host", "h", "--libvirt-uri", "qemu:///system; id"],
            "libvirt URI",
        ),
        (["--broker", "redis://x", "--host", "h", "--bogus"], "unrecognized"),
    ],
)
def test_bad_options_exit_2(args: list[str], message: str) -> None:
    out = run(*args)
    assert out.returncode == 2
    assert message in out.stderr
