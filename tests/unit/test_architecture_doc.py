"""docs/architecture.md names every package with the one job its __init__.py's docstring gives it, and no other."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "architecture.md"


def packages() -> dict[str, str]:
    """Every package of the product code, with the first line of its docstring."""
    found = {}
    for root in ("server", "scheduler", "worker"):
        for init in sorted((REPO / root).rglob("__init__.py")):
            name = ".".join(init.parent.relative_to(REPO).parts)
            found[name] = (ast.get_docstring(ast.parse(init.read_text())) or "").replace("\n", " ")
    return found


def documented() -> dict[str, str]:
    table = DOC.read_text().split("<!-- packages:", 1)[1].split("<!-- /packages -->", 1)[0]
    return dict(re.findall(r"^\| `([\w.]+)` \| (.+) \|$", table, flags=re.M))


def test_every_package_says_its_one_job() -> None:
    assert [name for name, job in packages().items() if not job] == []


def test_the_architecture_page_lists_each_package_with_its_docstring() -> None:
    assert documented() == packages()
