"""Rows of an alpaca or sharegpt dataset as conversations in LLaMA-Factory's roles.

A Conversation is what LLaMA-Factory's converters make of a row
(src/llamafactory/data/converter.py): turns in the roles user, assistant,
observation (a tool result) and function (a tool call), user / observation at odd
positions and assistant / function at even ones, ending on an assistant or
function turn; the system prompt and the tools (the JSON text of the tool list, as
LLaMA-Factory hands it to a template) kept beside the turns, not in them. A
template, or the chat-template path in worker.data.encode, decides how each role is
rendered. A row that cannot be such a conversation is skipped and counted, never
trained on half-read.

Pure: the worker converts with it; nothing here reads a file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from worker.preflight.dataset_info import DatasetAttr

log = logging.getLogger(__name__)

USER, ASSISTANT, OBSERVATION, FUNCTION = "user", "assistant", "observation", "function"
SHOWN_SKIPS = 3  # reasons logged per dataset: enough to see the pattern without flooding the log


@dataclass
class Conversation:
    messages: list[dict[str, str]]  # {"role": user | assistant | observation | function, "content": str}
    system: str | None = None
    tools: str | None = None  # JSON text of the tool list


class Malformed(Exception):
    """Why a row is not a conversation; it is skipped."""


def _require(ok: bool, why: str) -> None:
    if not ok:
        raise Malformed(why)


def convert_alpaca(row: Any, attr: DatasetAttr) -> Conversation:
    """instruction (+ "\\n" + input) as the last user turn, output as the answer; history pairs before it."""
    col = attr.columns
    _require(isinstance(row, dict), "not a JSON object")
    messages: list[dict[str, str]] = []
    history = row.get(col["history"]) if col["history"] else None
    if history:
        _require(isinstance(history, list), f"column {col['history']!r} is not a list of [prompt, response] pairs")
        for pair in history:
            ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)
            _require(ok, f"column {col['history']!r} holds something other than [prompt, response] pairs")
            messages += [{"role": USER, "content": pair[0]}, {"role": ASSISTANT, "content": pair[1]}]
    parts = [row.get(col[key]) for key in ("prompt", "query") if col[key] and row.get(col[key])]
    _require(all(isinstance(p, str) for p in parts), "instruction / input is not a string")
    _require(bool(parts), f"column {col['prompt']!r} is empty")
    response = row.get(col["response"]) if col["response"] else None
    _require(isinstance(response, str) and response != "", f"column {col['response']!r} is missing or empty")
    messages += [{"role": USER, "content": "\n".join(parts)}, {"role": ASSISTANT, "content": response}]
    return Conversation(messages, _system(row.get(col["system"]) if col["system"] else None), _tools(row, attr))


def convert_sharegpt(row: Any, attr: DatasetAttr) -> Conversation:
    """Role tags to LLaMA-Factory's roles; user/observation at odd turns, assistant/function at even ones."""
    col, tag = attr.columns, attr.tags
    _require(isinstance(row, dict), "not a JSON object")
    turns = row.get(col["messages"]) if col["messages"] else None
    _require(isinstance(turns, list) and bool(turns), f"column {col['messages']!r} is missing or not a list")
    _require(all(isinstance(t, dict) for t in turns), f"column {col['messages']!r} holds a non-object turn")
    role_of = {tag["user_tag"]: USER, tag["observation_tag"]: OBSERVATION,
               tag["assistant_tag"]: ASSISTANT, tag["function_tag"]: FUNCTION}  # fmt: skip
    role_of.pop(None, None)  # a tag an entry's `tags` leaves out is None: no turn has that role
    odd = [t for t in (tag["user_tag"], tag["observation_tag"]) if t is not None]
    even = [t for t in (tag["assistant_tag"], tag["function_tag"]) if t is not None]
    if tag["system_tag"] is not None and turns[0].get(tag["role_tag"]) == tag["system_tag"]:
        system, turns = _system(turns[0].get(tag["content_tag"])), turns[1:]
    else:
        system = _system(row.get(col["system"]) if col["system"] else None)
    _require(bool(turns), "the conversation has no turn besides the system prompt")
    messages: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        role, content = turn.get(tag["role_tag"]), turn.get(tag["content_tag"])
        expected = odd if i % 2 == 0 else even
        _require(role in expected, f"turn {i + 1} has role {role!r}, expected one of {expected}")
        _require(isinstance(content, str), f"turn {i + 1} has no string {tag['content_tag']!r}")
        messages.append({"role": role_of[role], "content": content})
    _require(len(turns) % 2 == 0, "the conversation does not end with an assistant turn")
    return Conversation(messages, system, _tools(row, attr))


def _system(value: Any) -> str | None:
    _require(value is None or isinstance(value, str), "the system prompt is not a string")
    return value or None


def _tools(row: dict[str, Any], attr: DatasetAttr) -> str | None:
    """The tool list as JSON text (LLaMA-Factory passes the column's text on; a list or object is dumped)."""
    name = attr.columns["tools"]
    tools = row.get(name) if name else None
    if tools in (None, "", [], {}):
        return None
    if isinstance(tools, (list, dict)):
        return json.dumps(tools, ensure_ascii=False)
    _require(isinstance(tools, str), f"column {name!r} is neither JSON text nor a list")
    try:
        json.loads(tools)
    except json.JSONDecodeError:
        _require(False, f"column {name!r} is not valid JSON")
    return tools


def convert_rows(rows: Sequence[Any], attr: DatasetAttr) -> list[Conversation]:
    """Every row that is a conversation; the others are counted in the log, with the first reasons."""
    convert = convert_alpaca if attr.formatting == "alpaca" else convert_sharegpt
    converted, skipped = [], 0
    for index, row in enumerate(rows):
        try:
            converted.append(convert(row, attr))
        except Malformed as why:
            skipped += 1
            if skipped <= SHOWN_SKIPS:
                log.warning("dataset %r: example %d skipped: %s", attr.name, index, why)
    if skipped:
        log.warning("dataset %r: skipped %d malformed examples of %d", attr.name, skipped, len(rows))
    return converted
