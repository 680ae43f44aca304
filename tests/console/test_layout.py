"""The layout the architecture promises: ``core`` builds on no domain app, and every status
colour a template asks for is declared by the status set that owns the status."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from console.core import choices

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


def test_every_colour_a_template_asks_for_is_declared(db: None) -> None:
    asked = {
        kind
        for page in (ROOT / "templates").rglob("*.html")
        for kind in re.findall(r"""colour:['"](\w+)['"]""", page.read_text())
    }
    assert {"host", "service", "job", "step", "event", "severity"} <= asked
    assert asked <= set(choices.kinds())
    assert choices.colour("host", "online") == "green" and choices.colour("job", "failed") == "red"
    assert choices.colour("service", "no-such-state") == "grey"


#: who may build on whom among the console's three working packages: people's operations and
#: the bootstrap build on the HA loop, never the other way round, and the bootstrap builds on
#: no operation (membership calls the bootstrap). Exceptions name their reason.
NOT_ON = {
    "ha": ("console.operations", "console.bootstrap"),
    "bootstrap": ("console.operations",),
}
EXCEPT = {
    # registers the operations' job-step hooks when Django starts (an import for its effect)
    "console/ha/apps.py",
    # the simulated agents also play the bootstrap's remote hosts (its error type)
    "console/ha/fakes.py",
    # the console's own agent is installed by the bootstrap's own code
    "console/ha/management/commands/haven_console_agent.py",
}


def test_operations_and_bootstrap_build_on_the_ha_loop_not_the_reverse() -> None:
    wrong = set()
    for package, banned in NOT_ON.items():
        sources = list((ROOT / "console" / package).rglob("*.py"))
        assert len(sources) >= 4, package
        for p in sources:
            rel = str(p.relative_to(ROOT))
            if rel in EXCEPT:
                continue
            wrong |= {f"{rel}: {m}" for m in imports_of(p) if m.startswith(banned)}
    assert wrong == set()
