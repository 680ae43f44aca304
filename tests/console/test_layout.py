"""The layout the architecture promises: ``core`` builds on no domain app, and every status
colour a template asks for is registered by the app that owns the status."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from console.core import colours

ROOT = Path(__file__).resolve().parents[2]
#: the apps core may build on: the event log is where core's writes are recorded
CORE_MAY_IMPORT = ("console.core", "console.events")


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_core_imports_no_domain_app() -> None:
    sources = [p for p in (ROOT / "console" / "core").rglob("*.py") if "migrations" not in p.parts]
    assert len(sources) > 10
    wrong = {
        f"{p.relative_to(ROOT)}: {m}"
        for p in sources
        for m in imports_of(p)
        if m.startswith("console.") and not m.startswith(CORE_MAY_IMPORT)
    }
    assert wrong == set()


def test_every_colour_a_template_asks_for_is_registered(db: None) -> None:
    asked = {
        kind
        for page in (ROOT / "templates").rglob("*.html")
        for kind in re.findall(r"""colour:['"](\w+)['"]""", page.read_text())
    }
    assert {"host", "service", "job", "step", "event", "severity"} <= asked
    assert asked <= colours.kinds()
    assert colours.of("host", "online") == "green" and colours.of("job", "failed") == "red"
    assert colours.of("service", "no-such-state") == "grey"
