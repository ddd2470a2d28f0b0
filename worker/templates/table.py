"""LLaMA-Factory's prompt templates (data/template.py at v0.9.5), as frozen data.

A template is a set of slots: sequences of elements that a message is poured
into. A string element has `{{content}}` (and for users `{{idx}}`) filled in
and is tokenized on its own; BOS / EOS stand for the tokenizer's own bos / eos
id (nothing when it has none); a Token is one id looked up in the vocabulary.
`_template` applies register_template's defaults, so each entry below reads
like LF's and can be checked against it line by line. Multimodal plugins are
left out: ftq fine-tunes text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Special:
    """LF's {"bos_token"} / {"eos_token"}: the tokenizer's id, read when encoding (after any replace_eos)."""

    name: str  # "bos_token" or "eos_token"


@dataclass(frozen=True)
class Token:
    """LF's {"token": "<sep>"}: a single id by vocabulary lookup, never split by the tokenizer."""

    text: str


BOS, EOS = Special("bos_token"), Special("eos_token")
Element = str | Special | Token
Slots = tuple[Element, ...]

THOUGHT_WORDS = ("<think>\n", "\n</think>\n\n")  # LF's default; an empty thought is their concatenation
TOOL_CALL_WORDS = ("<tool_call>", "</tool_call>")


@dataclass(frozen=True)
class Template:
    name: str
    format_user: Slots
    format_assistant: Slots
    format_system: Slots
    format_function: Slots  # poured with the tool_format's text for the calls
    format_observation: Slots
    format_prefix: Slots  # before the first message only
    tool_format: str  # LF's format_tools and format_function share it in every template here
    default_system: str
    stop_words: tuple[str, ...]
    thought_words: tuple[str, str]
    tool_call_words: tuple[str, str]
    efficient_eos: bool  # no eos after answers; one eos at the very end (worker.data.supervised)
    replace_eos: bool  # the tokenizer's eos becomes stop_words[0] (worker.templates.render.fix_tokenizer)
    system_in_user: bool  # LF's Llama2Template: the system text is glued in front of the first user message
    reasoning: bool  # LF's ReasoningTemplate: empty thoughts added, thoughts removed by enable_thinking
    enable_thinking: bool | None


def _template(
    name: str,
    *,
    format_user: Slots | None = None,
    format_assistant: Slots | None = None,
    format_system: Slots | None = None,
    format_function: Slots | None = None,
    format_observation: Slots | None = None,
    format_prefix: Slots = (),
    tool_format: str = "default",
    default_system: str = "",
    stop_words: tuple[str, ...] = (),
    efficient_eos: bool = False,
    replace_eos: bool = False,
    system_in_user: bool = False,
    reasoning: bool = False,
) -> Template:
    """register_template's defaults: note that system falls back to "{{content}}", not to format_user."""
    answer: Slots = ("{{content}}",) if efficient_eos else ("{{content}}", EOS)
    return Template(
        name=name,
        format_user=format_user or ("{{content}}",),
        format_assistant=format_assistant or answer,
        format_system=format_system or ("{{content}}",),
        format_function=format_function or format_assistant or answer,
        format_observation=format_observation or format_user or ("{{content}}",),
        format_prefix=format_prefix,
        tool_format=tool_format,
        default_system=default_system,
        stop_words=stop_words,
        thought_words=THOUGHT_WORDS,
        tool_call_words=TOOL_CALL_WORDS,
        efficient_eos=efficient_eos,
        replace_eos=replace_eos,
        system_in_user=system_in_user,
        reasoning=reasoning,
        enable_thinking=True,
    )


_CHATML_USER = "<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"
_CHATML_SYSTEM = "<|im_start|>system\n{{content}}<|im_end|>\n"
_CHATML_ANSWER = "{{content}}<|im_end|>\n"


def _chatml(name: str, default_system: str = "") -> Template:
    return _template(
        name,
        format_user=(_CHATML_USER,),
        format_assistant=(_CHATML_ANSWER,),
        format_system=(_CHATML_SYSTEM,),
        format_observation=("<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
        default_system=default_system,
        stop_words=("<|im_end|>", "<|im_start|>"),
        replace_eos=True,
    )


def _qwen(name: str, default_system: str = "", reasoning: bool = False) -> Template:
    return _template(
        name,
        format_user=(_CHATML_USER,),
        format_assistant=(_CHATML_ANSWER,),
        format_system=(_CHATML_SYSTEM,),
        format_function=(_CHATML_ANSWER,),
        format_observation=(
            "<|im_start|>user\n<tool_response>\n{{content}}\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
        ),
        tool_format="qwen",
        default_system=default_system,
        stop_words=("<|im_end|>",),
        replace_eos=True,
        reasoning=reasoning,
    )


def _gemma(name: str, **kwargs: Any) -> Template:
    return _template(
        name,
        format_user=("<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n",),
        format_assistant=("{{content}}<end_of_turn>\n",),
        format_system=("{{content}}\n\n",),
        format_observation=("<start_of_turn>tool\n{{content}}<end_of_turn>\n<start_of_turn>model\n",),
        format_prefix=(BOS,),
        system_in_user=True,
        **kwargs,
    )


def _deepseek3(name: str, reasoning: bool = False) -> Template:
    return _template(
        name, format_user=("<｜User｜>{{content}}<｜Assistant｜>",), format_prefix=(BOS,), reasoning=reasoning
    )


_LLAMA3_ANSWER_HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"

TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        _template(
            "default",
            format_user=("Human: {{content}}", EOS, "\nAssistant:"),
            format_assistant=("{{content}}", EOS, "\n"),
            format_system=("System: {{content}}", EOS, "\n"),
        ),
        _template("empty", format_assistant=("{{content}}",)),
        _template(
            "alpaca",
            format_user=("### Instruction:\n{{content}}\n\n### Response:\n",),
            format_assistant=("{{content}}", EOS, "\n\n"),
            default_system=(
                "Below is an instruction that describes a task. "
                "Write a response that appropriately completes the request.\n\n"
            ),
        ),
        _chatml("chatml"),
        _chatml("chatml_de", default_system="Du bist ein freundlicher und hilfsbereiter KI-Assistent."),
        _qwen("qwen", default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
        _qwen("qwen3", reasoning=True),
        _qwen("qwen3_nothink"),
        _template(
            "llama2",
            format_user=(BOS, "[INST] {{content}} [/INST]"),
            format_system=("<<SYS>>\n{{content}}\n<</SYS>>\n\n",),
            system_in_user=True,
        ),
        _template(
            "llama3",
            format_user=("<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|>" + _LLAMA3_ANSWER_HEADER,),
            format_assistant=("{{content}}<|eot_id|>",),
            format_system=("<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>",),
            format_function=("{{content}}<|eot_id|>",),
            format_observation=(
                "<|start_header_id|>ipython<|end_header_id|>\n\n{{content}}<|eot_id|>" + _LLAMA3_ANSWER_HEADER,
            ),
            format_prefix=(BOS,),
            tool_format="llama3",
            stop_words=("<|eot_id|>", "<|eom_id|>"),
            replace_eos=True,
        ),
        _template(  # mistral tokenizer v3
            "mistral",
            format_user=("[INST] {{content}}[/INST]",),
            format_assistant=(" {{content}}", EOS),
            format_system=("{{content}}\n\n",),
            format_function=("[TOOL_CALLS] {{content}}", EOS),
            format_observation=("""[TOOL_RESULTS] {"content": {{content}}}[/TOOL_RESULTS]""",),
            format_prefix=(BOS,),
            tool_format="mistral",
            system_in_user=True,
        ),
        _gemma("gemma", stop_words=("<end_of_turn>",), replace_eos=True),
        _gemma("gemma2", stop_words=("<eos>", "<end_of_turn>"), efficient_eos=True),
        _deepseek3("deepseek3"),
        _deepseek3("deepseekr1", reasoning=True),
    )
}
