"""LLaMA-Factory's tool formats (data/tool_utils.py at v0.9.5), as plain functions.

A tool format says two things: how the JSON tool definitions are written into
the system prompt, and how a `function` message (a JSON tool call) is written
as the assistant's answer. The texts below are LF's, character for character,
because a model fine-tuned on one wording expects it again at inference.
Only the formats the templates in worker.templates.table use are here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple


class UnknownToolFormat(ValueError):
    """A tool_format ftq does not implement; the message names the ones it does."""


class MalformedToolJson(ValueError):
    """A tools string or a function message that is not the JSON LF expects."""


class FunctionCall(NamedTuple):
    name: str
    arguments: str  # JSON text, as LF carries it


DEFAULT_TOOL_PROMPT = (
    "You have access to the following tools:\n{tool_text}"
    "Use the following format if using a tool:\n"
    "```\n"
    "Action: tool name (one of [{tool_names}])\n"
    "Action Input: the input to the tool, in a JSON format representing the kwargs "
    """(e.g. ```{{"input": "hello world", "num_beams": 5}}```)\n"""
    "```\n"
)

LLAMA3_TOOL_PROMPT = (
    "Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n"
    "You have access to the following functions. To call a function, please respond with JSON for a function call. "
    """Respond in the format {{"name": function name, "parameters": dictionary of argument name and its value}}. """
    "Do not use variables.\n\n{tool_text}"
)

QWEN_TOOL_PROMPT = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tool_text}"
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    """<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, """
    """"arguments": <args-json-object>}}\n</tool_call>"""
)


def _today() -> str:
    """LF's llama3 prompt carries the date of encoding; a test replaces this to pin it."""
    return datetime.now().strftime("%d %b %Y")


def _unwrap(tool: dict[str, Any]) -> dict[str, Any]:
    """OpenAI-style {"type": "function", "function": {...}} or the bare function."""
    return tool.get("function", {}) if tool.get("type") == "function" else tool


def _wrap(tool: dict[str, Any]) -> dict[str, Any]:
    return tool if tool.get("type") == "function" else {"type": "function", "function": tool}


def _default_tools(tools: list[dict[str, Any]]) -> str:
    tool_text, tool_names = "", []
    for tool in map(_unwrap, tools):
        param_text = ""
        for name, param in tool["parameters"]["properties"].items():
            required = ", required" if name in tool["parameters"].get("required", []) else ""
            enum = ", should be one of [{}]".format(", ".join(param["enum"])) if param.get("enum") else ""
            items = f", where each item should be {param['items'].get('type', '')}" if param.get("items") else ""
            kind, desc = param.get("type", ""), param.get("description", "")
            param_text += f"  - {name} ({kind}{required}): {desc}{enum}{items}\n"
        tool_text += f"> Tool Name: {tool['name']}\nTool Description: {tool.get('description', '')}\n"
        tool_text += f"Tool Args:\n{param_text}\n"
        tool_names.append(tool["name"])
    return DEFAULT_TOOL_PROMPT.format(tool_text=tool_text, tool_names=", ".join(tool_names))


def _default_calls(calls: list[FunctionCall]) -> str:
    return "\n".join(f"Action: {name}\nAction Input: {arguments}" for name, arguments in calls)


def _llama3_tools(tools: list[dict[str, Any]]) -> str:
    tool_text = "".join(json.dumps(_wrap(tool), indent=4, ensure_ascii=False) + "\n\n" for tool in tools)
    return LLAMA3_TOOL_PROMPT.format(date=_today(), tool_text=tool_text)


def _llama3_calls(calls: list[FunctionCall]) -> str:
    objects = [{"name": name, "parameters": json.loads(arguments)} for name, arguments in calls]
    return json.dumps(objects[0] if len(objects) == 1 else objects, ensure_ascii=False)


def _mistral_tools(tools: list[dict[str, Any]]) -> str:
    return "[AVAILABLE_TOOLS] " + json.dumps([_wrap(tool) for tool in tools], ensure_ascii=False) + "[/AVAILABLE_TOOLS]"


def _mistral_calls(calls: list[FunctionCall]) -> str:
    return json.dumps([{"name": name, "arguments": json.loads(args)} for name, args in calls], ensure_ascii=False)


def _qwen_tools(tools: list[dict[str, Any]]) -> str:
    tool_text = "".join("\n" + json.dumps(_wrap(tool), ensure_ascii=False) for tool in tools)
    return QWEN_TOOL_PROMPT.format(tool_text=tool_text)


def _qwen_calls(calls: list[FunctionCall]) -> str:
    texts = [json.dumps({"name": name, "arguments": json.loads(args)}, ensure_ascii=False) for name, args in calls]
    return "\n".join(f"<tool_call>\n{text}\n</tool_call>" for text in texts)


@dataclass(frozen=True)
class ToolFormat:
    name: str
    tools: Callable[[list[dict[str, Any]]], str]  # tool definitions -> text appended to the system prompt
    calls: Callable[[list[FunctionCall]], str]  # tool calls -> the assistant's answer text


TOOL_FORMATS: dict[str, ToolFormat] = {
    f.name: f
    for f in (
        ToolFormat("default", _default_tools, _default_calls),
        ToolFormat("llama3", _llama3_tools, _llama3_calls),
        ToolFormat("mistral", _mistral_tools, _mistral_calls),
        ToolFormat("qwen", _qwen_tools, _qwen_calls),
    )
}
TOOL_FORMAT_NAMES: tuple[str, ...] = tuple(sorted(TOOL_FORMATS))


def get_tool_format(name: str) -> ToolFormat:
    if name not in TOOL_FORMATS:
        raise UnknownToolFormat(f"tool_format {name!r} is not supported by ftq; it has: {', '.join(TOOL_FORMAT_NAMES)}")
    return TOOL_FORMATS[name]


def format_tools(tool_format: str, tools: str) -> str:
    """LF's ToolFormatter: the JSON list of tool definitions as system-prompt text ("" for an empty list)."""
    try:
        definitions = json.loads(tools)
    except json.JSONDecodeError as exc:
        raise MalformedToolJson(f"tools is not valid JSON: {exc}") from None
    if not isinstance(definitions, list) or not all(isinstance(tool, dict) for tool in definitions):
        raise MalformedToolJson("tools must be a JSON list of tool definitions (objects)")
    if not definitions:
        return ""
    try:
        return get_tool_format(tool_format).tools(definitions)
    except KeyError as exc:
        raise MalformedToolJson(f"a tool definition lacks the key {exc} tool_format {tool_format!r} reads") from None


def _parse_calls(text: str) -> list[FunctionCall]:
    try:
        calls = json.loads(text)
        calls = calls if isinstance(calls, list) else [calls]  # a list is a parallel call
        return [FunctionCall(call["name"], json.dumps(call["arguments"], ensure_ascii=False)) for call in calls]
    except json.JSONDecodeError:
        raise MalformedToolJson(f"a function message is not valid JSON: {text!r}") from None
    except (KeyError, TypeError):
        raise MalformedToolJson(f"a function message needs 'name' and 'arguments': {text!r}") from None


def format_function(
    tool_format: str,
    content: str,
    thought_words: tuple[str, str] | None = None,
    tool_call_words: tuple[str, str] | None = None,
) -> str:
    """LF's FunctionFormatter: a function message's JSON calls as answer text, keeping prose or a thought before it.

    When the content already wraps the JSON in tool_call_words, the JSON is taken from inside them and what
    surrounds them is kept in front; otherwise a thought (thought_words) is lifted off and kept in front.
    """
    call_match = None
    if tool_call_words and len(tool_call_words) == 2:
        pattern = rf"{re.escape(tool_call_words[0])}(.*?){re.escape(tool_call_words[1])}"
        call_match = re.search(pattern, content, re.DOTALL)
    calls_text = get_tool_format(tool_format).calls
    if call_match is not None:
        return content.replace(call_match.group(0), "") + calls_text(_parse_calls(call_match.group(1)))
    thought_match = None
    if thought_words and len(thought_words) == 2:
        pattern = rf"{re.escape(thought_words[0])}(.*?){re.escape(thought_words[1])}"
        thought_match = re.search(pattern, content, re.DOTALL)
    if thought_match is None:
        return calls_text(_parse_calls(content))
    thought = thought_match.group(0)
    return thought + calls_text(_parse_calls(content.replace(thought, "")))
