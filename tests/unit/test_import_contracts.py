"""The import rules in .importlinter can fail: a copy of the code with one wrong import per rule breaks each of them.

`make lint` runs the same contracts on the real tree (where they hold); this test makes sure that no contract is
written so that it cannot fail (a module named wrong, a rule that only looks at direct imports where the arrow is
indirect, the standard library not counted as an external package).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / ".importlinter"

# contract id -> (file written into the copy, its source): each is a wrong arrow the contract exists to catch
WRONG_ARROWS = {
    "cli-speaks-http": ("server/cli/wrong_arrow.py", "import server.db.store\n"),
    "server-layers": ("server/db/wrong_arrow.py", "import server.services.jobs\n"),
    "routes-know-no-scheduler": ("server/api/wrong_arrow.py", "import scheduler.loop\n"),
    "policy-is-pure": ("scheduler/policy/wrong_arrow.py", "import subprocess\n"),
    "scheduler-reads-only-the-spec": ("scheduler/wrong_arrow.py", "import worker.run.recipe\n"),
    "server-reads-spec-and-preflight": ("server/services/wrong_arrow.py", "import worker.data.pipeline\n"),
    "daemon-imports-no-torch": ("worker/templates/wrong_arrow.py", "import torch\n"),
    "worker-stands-alone": ("worker/run/wrong_arrow.py", "import server.settings\n"),
    "ray-over-local": ("scheduler/local/wrong_arrow.py", "import scheduler.ray.executor\n"),
    "no-circles": ("worker/spec/wrong_arrow.py", "import worker.spec.wrong_arrow_back\n"),
}
CIRCLE_BACK = ("worker/spec/wrong_arrow_back.py", "import worker.spec.wrong_arrow\n")


def contract_names() -> dict[str, str]:
    """id -> name, as .importlinter declares them."""
    text = CONFIG.read_text()
    found = re.findall(r"^\[importlinter:contract:([\w-]+)\]\nname = (.+)$", text, flags=re.M)
    return dict(found)


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "300"}  # one line per contract name
    command = [str(Path(sys.executable).with_name("lint-imports")), "--config", str(CONFIG), "--no-cache"]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def copy_code(to: Path) -> None:
    for package in ("server", "scheduler", "worker"):
        shutil.copytree(REPO / package, to / package, ignore=shutil.ignore_patterns("__pycache__", "*.js", "*.css"))


def broken_sections(output: str, names: dict[str, str]) -> dict[str, str]:
    """Each broken contract's part of the report (after the "Broken contracts" heading), by id."""
    report = output.split("Broken contracts", 1)[-1]
    starts = sorted((report.find(f"{name}\n---"), cid) for cid, name in names.items() if f"{name}\n---" in report)
    ends = [at for at, _ in starts[1:]] + [len(report)]
    return {cid: report[at:end] for (at, cid), end in zip(starts, ends, strict=True)}


def test_every_contract_of_the_config_has_a_wrong_arrow_here() -> None:
    assert set(contract_names()) == set(WRONG_ARROWS)


@pytest.mark.skipif(not Path(sys.executable).with_name("lint-imports").exists(), reason="import-linter is missing")
def test_each_contract_reports_the_wrong_arrow_written_into_a_copy_of_the_code(tmp_path: Path) -> None:
    copy_code(tmp_path)
    for path, source in [*WRONG_ARROWS.values(), CIRCLE_BACK]:
        (tmp_path / path).write_text(source)
    result = lint(tmp_path)
    names = contract_names()
    assert result.returncode != 0, result.stdout
    sections = broken_sections(result.stdout, names)
    for cid, (path, _) in WRONG_ARROWS.items():
        module = path.removesuffix(".py").replace("/", ".")
        short = module.rsplit(".", 1)[-1]
        assert cid in sections, f"{cid} was kept despite {path}:\n{result.stdout}"
        assert module in sections[cid] or f".{short}" in sections[cid], f"{cid} broke, but not over {module}"
