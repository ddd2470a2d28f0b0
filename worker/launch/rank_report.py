"""A rank's side of a multi-GPU run: whether this process is one of torchrun's ranks, and its end report.

Under worker.launch.torchrun every rank runs the ordinary recipe, but none writes the
`end` record: each leaves a report (the record it would have written, plus its
exit code) in RUN_DIR/ranks/rank-N.json (N the global rank), which the launcher
adds up (worker.launch.ranks).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.spec.layout import rank_report_file

RANKS_DIR_ENV = "FTQ_RANKS_DIR"  # set by the launcher: where a rank writes its report instead of an `end` record


def is_rank(env: Mapping[str, str]) -> bool:
    """Whether this process is one of torchrun's ranks."""
    return "LOCAL_RANK" in env or "RANK" in env


def rank_report_path(env: Mapping[str, str]) -> Path | None:
    """Where this rank reports its end to the launcher; None when no launcher of ours waits for it."""
    if RANKS_DIR_ENV not in env or not is_rank(env):
        return None
    return Path(env[RANKS_DIR_ENV]) / rank_report_file(int(env.get("RANK", "0")))


def write_rank_report(path: Path, report: dict[str, Any]) -> None:
    """Write the report whole or not at all: the launcher reads it after the rank is gone."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
