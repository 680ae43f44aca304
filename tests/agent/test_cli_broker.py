"""The broker URL (with the agent's own password) may stay off the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.__main__ import settings_from_args

URL = "redis://haven-agent-h:s3cret@10.88.0.254:6379/0"


def test_broker_from_the_environment() -> None:
    settings = settings_from_args(["--host", "h"], {"HAVEN_AGENT_BROKER": URL})
    assert settings.broker == URL


def test_broker_from_a_file(tmp_path: Path) -> None:
    env = tmp_path / "agent-h.env"
    env.write_text(f"# comment\nHAVEN_AGENT_HOST=h\nHAVEN_AGENT_BROKER={URL}\n")
    assert settings_from_args(["--host", "h", "--broker-file", str(env)], {}).broker == URL


def test_no_broker_at_all_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        settings_from_args(["--host", "h"], {})
    assert "give --broker, --broker-file or $HAVEN_AGENT_BROKER" in capsys.readouterr().err


def test_a_bad_broker_url_is_refused_without_echoing_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        settings_from_args(["--host", "h"], {"HAVEN_AGENT_BROKER": "http://u:s3cret@x/"})
    err = capsys.readouterr().err
    assert "invalid broker URL" in err and "s3cret" not in err
