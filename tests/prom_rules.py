"""configs/prometheus/alerts.yml as the tests read it: its rules, and the metric names their expressions use."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.helpers import REPO

PROMETHEUS_DIR = REPO / "configs" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
# Series that Prometheus makes itself, not read from /metrics.
PROMETHEUS_OWN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf"}
)
_NOT_NAMES = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|\{[^}]*\}|\[[^\]]*\]')
_IDENTIFIER = re.compile(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*(\(?)")


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: its identifiers, less functions, keywords, label matchers,
    ranges and strings (enough for the expressions alerts.yml writes; `by (...)` lists are label names)."""
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    text = _NOT_NAMES.sub(" ", text)
    return {name for name, call in _IDENTIFIER.findall(text) if not call and name.lower() not in _KEYWORDS}
