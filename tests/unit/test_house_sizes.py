"""The house stays readable (STYLE.md 14 and 15): no folder of more than 15 modules, no module over 400 lines, no
function over 60 lines unless its docstring says why it is long ("long because ...")."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("server", "scheduler", "worker")
MAX_MODULES, MAX_LINES, MAX_FUNCTION = 15, 400, 60


def sources() -> list[Path]:
    return sorted(path for root in ROOTS for path in (REPO / root).rglob("*.py"))


def test_no_folder_holds_more_than_15_modules() -> None:
    folders = {path.parent for path in sources()}
    crowded = {
        str(folder.relative_to(REPO)): count
        for folder in folders
        if (count := sum(1 for p in folder.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))) > MAX_MODULES
    }
    assert crowded == {}


def test_no_module_is_over_400_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in sources() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_function_is_over_60_lines_unless_its_docstring_says_why() -> None:
    long = {}
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION and "long because" not in (ast.get_docstring(node) or ""):
                    long[f"{path.relative_to(REPO)}:{node.lineno} {node.name}"] = lines
    assert long == {}
