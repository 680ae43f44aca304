"""console/engine imports nothing outside the standard library (and itself)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "console" / "engine"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_engine_imports_only_the_standard_library() -> None:
    files = sorted(ENGINE.rglob("*.py"))
    assert files
    bad = {
        f"{path.relative_to(ENGINE)}: {name}"
        for path in files
        for name in _imports(path)
        if not name.startswith("console.engine")
        and name.split(".")[0] not in sys.stdlib_module_names
    }
    assert bad == set()


def test_the_check_catches_a_third_party_import(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import django\nfrom console.jobs import models\nimport json\n")
    names = _imports(sample)
    outside = {n for n in names if n.split(".")[0] not in sys.stdlib_module_names}
    assert outside == {"django", "console.jobs"}
