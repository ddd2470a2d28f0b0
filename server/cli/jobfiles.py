"""Job files and --set overrides, read as YAML within bounds: what `ftq submit`, `ftq estimate` and the demo send.

YAML's aliases let a file of a few hundred bytes stand for billions of values ("billion laughs"): PyYAML shares
the aliased objects, but sending the spec as JSON writes every one out. So the file's node graph is measured as
it would be written out, before anything is built from it, and a file that would expand past MAX_NODES values
is refused naming the file. PyYAML has no such bound of its own, hence this one; normal files (a LLaMA-Factory
training file holds a few dozen values, and anchors are rare) stay far below it. Numbers JSON cannot hold
(`.inf`, `.nan`) are refused naming their key, rather than failing in the JSON encoder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from server.cli.client import CliError

# Values a job file may expand to once its aliases are written out: a spec holds a few dozen, a DeepSpeed config
# inline a few hundred; far more is a file built to exhaust memory.
MAX_NODES = 100_000


class TooLarge(yaml.YAMLError):
    """A document whose aliases expand past MAX_NODES values, or that refers to itself."""


def expanded_size(root: yaml.Node, most: int = MAX_NODES) -> int:
    """How many values `root` stands for once every alias is written out in full, counting each alias's
    subtree as often as it is used; TooLarge past `most`, or for a node that contains itself.
    Each node is measured once (memoised), so a billion laughs costs its few dozen nodes, not its expansion."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    todo: list[tuple[yaml.Node, bool]] = [(root, False)]
    while todo:
        node, children_done = todo.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done:
            open_.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > most:
                raise TooLarge(f"its aliases expand to more than {most:,} values; write the values out, or fewer")
            continue
        if id(node) in open_:
            raise TooLarge("an alias refers to a node that contains it; a spec cannot contain itself")
        open_.add(id(node))
        todo.append((node, True))
        for child in children:
            if id(child) in open_:
                raise TooLarge("an alias refers to a node that contains it; a spec cannot contain itself")
            todo.append((child, False))
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, which measures each document (expanded_size) before constructing it."""

    def construct_document(self, node: yaml.Node) -> Any:
        expanded_size(node)
        return super().construct_document(node)


def read_yaml(text: str) -> Any:
    """One YAML document, by the bounded loader."""
    try:
        return yaml.load(text, Loader=BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError as exc:  # PyYAML composes recursively: a value nested thousands deep
        raise TooLarge("it nests too deep to read; flatten it") from exc


def non_finite(value: Any, where: str = "") -> str | None:
    """Where in `value` a number JSON cannot hold (inf, nan) sits, as key.path, or None."""
    todo: list[tuple[Any, str]] = [(value, where)]
    while todo:
        current, at = todo.pop()
        if isinstance(current, float) and not math.isfinite(current):
            return f"{at} is {current}" if at else str(current)
        if isinstance(current, dict):
            todo += [(item, f"{at}.{key}" if at else str(key)) for key, item in current.items()]
        elif isinstance(current, list):
            todo += [(item, f"{at}.{index}" if at else str(index)) for index, item in enumerate(current)]
    return None


FINITE = "JSON and the daemon take finite numbers only; give a number"


def load_spec(path: Path, overrides: list[str]) -> dict[str, Any]:
    """A job file (YAML or JSON, as written for llamafactory-cli) with KEY=VALUE overrides applied."""
    try:
        spec = read_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc
    if not isinstance(spec, dict):
        raise CliError(f"{path} must hold a mapping of keys to values")
    if (where := non_finite(spec)) is not None:
        raise CliError(f"{path}: {where}, which is not a finite number; {FINITE}")
    return {**spec, **parse_overrides(overrides)}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE pairs, each value read as YAML (numbers, booleans, lists)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--set {item!r}: expected KEY=VALUE, e.g. --set gpus=0")
        try:
            overrides[key.strip()] = read_yaml(value)
        except yaml.YAMLError as exc:
            raise CliError(f"--set {item!r}: the value of {key.strip()} is not readable YAML ({exc})") from exc
        if (where := non_finite(overrides[key.strip()], key.strip())) is not None:
            raise CliError(f"--set {item!r}: {where}, which is not a finite number; {FINITE}")
    return overrides
