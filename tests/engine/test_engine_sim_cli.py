"""The simulator's command line: trace format, exit codes, field named on bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from console.engine.sim import ScenarioError, parse
from console.engine.sim.__main__ import main

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def _run(path: Path, *args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "console.engine.sim", str(path), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_trace_is_json_lines_then_final(tmp_path: Path) -> None:
    code, out, _ = _run(SCENARIOS / "power-off-fence-recover.json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert all(set(x) == {"t", "label"} and isinstance(x["t"], float) for x in lines[:-1])
    assert {"t": 20.0, "label": "power_off:n1"} in lines
    assert any(x["label"] == "fence:n1:ok" for x in lines[:-1])
    last = lines[-1]
    assert last["ok"] is True and last["failures"] == []
    assert last["final"]["services"]["g"] == {"state": "started", "node": "n2"}
    assert last["final"]["nodes"]["n1"]["state"] == "fenced"


def test_failed_expectation_exits_1(tmp_path: Path) -> None:
    raw = json.loads((SCENARIOS / "power-off-fence-recover.json").read_text())
    raw["expect"]["final"]["g"]["node"] = "n3"
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(raw))
    code, out, _ = _run(path)
    assert code == 1
    last = json.loads(out.splitlines()[-1])
    assert last["ok"] is False
    assert last["failures"] == ["final: g should be started on n3, is started on n2"]


def test_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(SCENARIOS / "crash-relocate-policy.json"), "--human"]) == 0
    out = capsys.readouterr().out
    assert "crash:g" in out and "g: started -> recovering" in out and out.endswith("OK\n")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r["nodes"][0].pop("memory_mb"), "nodes[0].memory_mb"),
        (lambda r: r["services"][0].update(memory_mb="big"), "services[0].memory_mb"),
        (lambda r: r["services"][0].update(node="nowhere"), "services[0].node"),
        (lambda r: r["events"][0].update(do="explode"), "events[0].do"),
        (lambda r: r["events"][0].pop("node"), "events[0].node"),
        (lambda r: r.update(until="soon"), "until"),
        (lambda r: r["expect"]["final"].update(ghost={"state": "started"}), "expect.final.ghost"),
        (lambda r: r["expect"].update(order=[["a"]]), "expect.order[0]"),
        (lambda r: r.update(settings={"warp": 9}), "settings.warp"),
        (lambda r: r.update(colour="red"), "colour"),
        (lambda r: r["events"][0].update(do="lose_results", service="g"), "events[0]"),
        (lambda r: r["events"][0].update(do="lose_results", count=0), "events[0].count"),
        (lambda r: r["events"][0].update(do="console_lag", **{"for": 5}), "events[0].s"),
        (lambda r: r["events"][0].update(do="console_restart", s=1), "events[0].s"),
    ],
)
def test_malformed_file_names_the_field(tmp_path: Path, change: object, field: str) -> None:
    raw = json.loads((SCENARIOS / "power-off-fence-recover.json").read_text())
    assert callable(change)
    change(raw)
    with pytest.raises(ScenarioError) as err:
        parse(raw)
    assert err.value.where == field
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    code, out, errtext = _run(path)
    assert code == 2 and out == "" and field in errtext


def test_not_json_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{nope")
    assert _run(path)[0] == 2
