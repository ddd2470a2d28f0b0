"""Conversations to (prompt ids, response ids) pairs, the way LLaMA-Factory's `template:` does it.

`encode_multiturn` reproduces LF's Template.encode_multiturn (data/template.py at
v0.9.5): every slot element is tokenized on its own, the system prompt (with the
tools text) goes in the first turn only, reasoning templates add or drop empty
thoughts. `chat_template_pairs` is the fallback when no template is named: the
tokenizer's own chat template, rendered as growing prefixes.

Tokenizers are passed in and duck-typed; nothing heavy is imported, because the
daemon imports this module to check `template` names at submit. LF edits the
tokenizer (eos, pad, stop words) before encoding; here that is `fix_tokenizer`,
called explicitly on a tokenizer the caller owns, and encoding refuses a
tokenizer that was not fixed instead of quietly producing other ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from worker.templates.table import EOS, TEMPLATES, Element, Special, Template, Token
from worker.templates.tools import format_function, format_tools, get_tool_format

TEMPLATE_NAMES: tuple[str, ...] = tuple(sorted(TEMPLATES))
PROMPT_ROLES, ANSWER_ROLES = ("user", "observation"), ("assistant", "function")
CHAT_ROLES = {"user": "user", "observation": "tool", "assistant": "assistant", "function": "assistant"}

Messages = Sequence[dict[str, str]]
Pairs = list[tuple[list[int], list[int]]]


class UnknownTemplate(ValueError):
    """A `template` name ftq does not have; the message lists the ones it has."""


class MalformedMessages(ValueError):
    """Messages that are not user/observation, assistant/function pairs of strings."""


class TokenizerNotFixed(ValueError):
    """The tokenizer lacks the eos the template needs: fix_tokenizer was not called on it."""


class ChatTemplateError(ValueError):
    """The tokenizer's own chat template is missing, or cannot be split into turns."""


def get_template(
    name: str, default_system: str | None = None, tool_format: str | None = None, enable_thinking: bool | None = True
) -> Template:
    """LF's template with the data arguments applied (get_template_and_fix_tokenizer, tokenizer part aside).

    A tool_format also resets format_function to the plain answer slots, as LF does, so e.g. qwen with
    tool_format=qwen ends a tool call with eos rather than qwen's own "<|im_end|>\\n".
    """
    if name not in TEMPLATES:
        raise UnknownTemplate(f"template {name!r} is not one ftq has; it has: {', '.join(TEMPLATE_NAMES)}")
    template, changes = TEMPLATES[name], dict[str, Any]()
    if tool_format is not None:
        get_tool_format(tool_format)  # raises UnknownToolFormat naming the supported ones
        changes["tool_format"] = tool_format
        changes["format_function"] = ("{{content}}",) if template.efficient_eos else ("{{content}}", EOS)
    if default_system is not None:
        changes["default_system"] = default_system
    if template.reasoning:  # LF sets it on reasoning templates only
        changes["enable_thinking"] = enable_thinking
    return replace(template, **changes)


def _check_messages(messages: Messages) -> None:
    if not messages or len(messages) % 2:
        raise MalformedMessages(f"expected prompt/answer pairs, got {len(messages)} messages")
    for i, message in enumerate(messages):
        expected = PROMPT_ROLES if i % 2 == 0 else ANSWER_ROLES
        if message.get("role") not in expected:
            raise MalformedMessages(f"message {i + 1} has role {message.get('role')!r}, expected one of {expected}")
        if not isinstance(message.get("content"), str):
            raise MalformedMessages(f"message {i + 1} has no string content")


def _fill(slots: Sequence[Element], **values: str) -> list[Element]:
    """StringFormatter.apply: each placeholder replaced once, in the order given."""
    elements: list[Element] = []
    for slot in slots:
        if isinstance(slot, str):
            for key, value in values.items():
                slot = slot.replace("{{" + key + "}}", value, 1)
        elements.append(slot)
    return elements


def _message_elements(
    template: Template, i: int, message: dict[str, str], system: str | None, tools: str | None
) -> list[Element]:
    """LF's Template._encode (or Llama2Template._encode) for one message: its elements, untokenized."""
    elements: list[Element] = []
    system_text = ""
    if i == 0:
        elements += template.format_prefix
        system = system or template.default_system
        if system or tools:
            content = system + (format_tools(template.tool_format, tools) if tools else "")
            if template.system_in_user:
                first = _fill(template.format_system, content=content)[0]  # LF takes the first element
                assert isinstance(first, str), f"{template.name}: system_in_user needs a text first system slot"
                system_text = first
            else:
                elements += _fill(template.format_system, content=content)
    role, content = message["role"], message["content"]
    if role == "user" and template.system_in_user:
        return elements + _fill(template.format_user, content=system_text + content)
    if role == "user":
        return elements + _fill(template.format_user, content=content, idx=str(i // 2))
    if role == "assistant":
        return elements + _fill(template.format_assistant, content=content)
    if role == "observation":
        return elements + _fill(template.format_observation, content=content)
    if template.system_in_user:  # Llama2Template calls the function formatter without thought or tool-call words
        calls = format_function(template.tool_format, content)
    else:
        calls = format_function(template.tool_format, content, template.thought_words, template.tool_call_words)
    return elements + _fill(template.format_function, content=calls)


def remove_thought(template: Template, content: str) -> str:
    open_, close = map(re.escape, template.thought_words)
    return re.sub(f"{open_}(.*?){close}", "", content, flags=re.DOTALL).lstrip("\n")


def _has_thought(template: Template, content: str) -> bool:
    return any(word.strip() in content for word in template.thought_words)


def format_turns(
    template: Template,
    messages: Messages,
    system: str | None = None,
    tools: str | None = None,
    discarding_history_cot: bool = False,
) -> list[tuple[list[Element], list[Element]]]:
    """The (prompt elements, response elements) of every answer, before tokenizing: what LF would encode.

    Reasoning templates (LF's ReasoningTemplate): with enable_thinking False every thought is removed first;
    discarding_history_cot (LF passes mask_history) removes the thoughts of all but the last answer. Then an
    answer with no thought of its own gets an empty one: in the response (trained on) when thinking is
    enabled, at the end of the prompt (not trained on) when it is not.
    """
    _check_messages(messages)
    messages = [dict(message) for message in messages]
    if template.reasoning:
        for i in range(1, len(messages), 2):
            if template.enable_thinking is False or (discarding_history_cot and i < len(messages) - 2):
                messages[i]["content"] = remove_thought(template, messages[i]["content"])
    elements = [_message_elements(template, i, m, system, tools) for i, m in enumerate(messages)]
    pairs = [(elements[i], elements[i + 1]) for i in range(0, len(elements), 2)]
    if template.reasoning:
        empty_thought = "".join(template.thought_words)
        turns = [len(pairs) - 1] if discarding_history_cot else range(len(pairs))
        for turn in turns:
            if _has_thought(template, messages[2 * turn + 1]["content"]):
                continue
            prompt, response = pairs[turn]
            if template.enable_thinking:
                pairs[turn] = (prompt, [empty_thought, *response])
            else:
                pairs[turn] = ([*prompt, empty_thought], response)
    return pairs


def elements_to_ids(tokenizer: Any, elements: Sequence[Element]) -> list[int]:
    """LF's _convert_elements_to_ids: each string tokenized alone, bos/eos only when the tokenizer has one."""
    ids: list[int] = []
    for element in elements:
        if isinstance(element, str):
            ids += tokenizer.encode(element, add_special_tokens=False) if element else []
        elif isinstance(element, Token):
            ids.append(tokenizer.convert_tokens_to_ids(element.text))
        elif isinstance(element, Special):
            token_id = getattr(tokenizer, f"{element.name}_id")
            ids += [] if token_id is None else [token_id]
    return ids


def encode_multiturn(
    template: Template,
    tokenizer: Any,
    messages: Messages,
    system: str | None = None,
    tools: str | None = None,
    discarding_history_cot: bool = False,
) -> Pairs:
    """LF's Template.encode_multiturn: one (prompt ids, response ids) pair per answer.

    The tokenizer must have been through fix_tokenizer(template, ...) first, as LF's always has.
    """
    if tokenizer.eos_token_id is None or (template.replace_eos and tokenizer.eos_token != template.stop_words[0]):
        want = repr(template.stop_words[0]) if template.replace_eos else "an eos token"
        raise TokenizerNotFixed(
            f"template {template.name!r} needs {want} as the tokenizer's eos, it has {tokenizer.eos_token!r}: "
            "call fix_tokenizer(template, tokenizer) on a tokenizer you own before encoding"
        )
    turns = format_turns(template, messages, system, tools, discarding_history_cot)
    return [(elements_to_ids(tokenizer, prompt), elements_to_ids(tokenizer, answer)) for prompt, answer in turns]


@dataclass(frozen=True)
class TokenizerFix:
    """What fix_tokenizer changed, worded for the log; new_tokens > 0 means the embeddings must be resized."""

    changes: tuple[str, ...]
    new_tokens: int


def _set_eos(tokenizer: Any, eos_token: str, changes: list[str]) -> int:
    if tokenizer.eos_token == eos_token:
        return 0
    before = tokenizer.eos_token
    added: int = tokenizer.add_special_tokens({"eos_token": eos_token})  # the tokenizer is untyped (Any)
    changes.append(f"eos token {before!r} -> {eos_token!r}" if before is not None else f"add eos token {eos_token!r}")
    return added


def fix_tokenizer(template: Template, tokenizer: Any) -> TokenizerFix:
    """LF's fix_special_tokens, applied IN PLACE to a tokenizer the caller owns (never a shared one).

    replace_eos makes stop_words[0] the eos (qwen: "<|im_end|>"), so every EOS element and the end of
    generation use it; a tokenizer with no eos gets "<|endoftext|>", one with no pad pads with eos, and the
    other stop words become special tokens, so that text containing them is no longer split.
    """
    changes: list[str] = []
    stop_words = list(template.stop_words)
    new_tokens = 0
    if template.replace_eos:
        if not stop_words:
            raise ValueError(f"template {template.name!r} replaces eos but has no stop words")
        new_tokens += _set_eos(tokenizer, stop_words.pop(0), changes)
    if tokenizer.eos_token_id is None:
        new_tokens += _set_eos(tokenizer, "<|endoftext|>", changes)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
        changes.append(f"pad token = eos token {tokenizer.eos_token!r}")
    if stop_words:
        try:  # transformers 5 renamed LF's additional_special_tokens
            added = tokenizer.add_special_tokens(
                {"extra_special_tokens": stop_words}, replace_extra_special_tokens=False
            )
        except TypeError:
            added = tokenizer.add_special_tokens(
                {"additional_special_tokens": stop_words}, replace_additional_special_tokens=False
            )
        new_tokens += added
        changes.append(f"stop words {', '.join(map(repr, stop_words))} made special tokens")
    return TokenizerFix(tuple(changes), new_tokens)


def chat_template_pairs(
    tokenizer: Any, messages: Messages, system: str | None = None, tools: str | None = None
) -> Pairs:
    """The same pairs rendered by the tokenizer's own chat template, for a job that names no template.

    Each answer is located by rendering growing prefixes: what the conversation up to an answer adds (with
    the generation prompt) is that pair's prompt, what the answer then adds is its response.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError("the tokenizer has no chat_template: name a `template` for this model")
    _check_messages(messages)
    try:
        tool_list = (json.loads(tools) or None) if tools else None
    except json.JSONDecodeError as exc:
        raise MalformedMessages(f"tools is not valid JSON: {exc}") from None
    chat = [{"role": "system", "content": system}] if system else []
    offset = len(chat)
    chat += [{"role": CHAT_ROLES[m["role"]], "content": m["content"]} for m in messages]

    def render(upto: int, generation: bool) -> str:
        text: str = tokenizer.apply_chat_template(  # the tokenizer is untyped (Any); tokenize=False gives text
            chat[:upto], tools=tool_list, tokenize=False, add_generation_prompt=generation
        )
        return text

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False) if text else []

    pairs: Pairs = []
    done = ""  # the text already split into pairs
    for k in range(offset + 1, len(chat), 2):  # every answer
        prompt, answered = render(k, True), render(k + 1, False)
        if not prompt.startswith(done) or not answered.startswith(prompt):
            raise ChatTemplateError(
                "the tokenizer's chat template does not render a conversation as a growing prefix "
                "(it rewrites earlier turns), so its answers cannot be located: name a `template` instead"
            )
        pairs.append((encode(prompt[len(done) :]), encode(answered[len(prompt) :])))
        done = answered
    return pairs
