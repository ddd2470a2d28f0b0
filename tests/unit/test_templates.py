"""worker.templates.render: LLaMA-Factory's `template:` encoding, checked against fixtures written by hand.

The expected elements below were derived by reading LF's src/llamafactory/data/template.py,
formatter.py and tool_utils.py at tag v0.9.5 (commit 7af909522a951e3ad9f022ea6f88b6755257eaa5),
not by running either LF or our code: each list is the sequence of slot elements LF tokenizes
one by one (BOS / EOS stand for the tokenizer's ids). The token ids are then computed again
here from LF's per-element rule and compared with encode_multiturn's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from worker.data.supervised import IGNORE_INDEX, encode_supervised
from worker.templates import tools as tool_formats
from worker.templates.render import (
    TEMPLATE_NAMES,
    ChatTemplateError,
    MalformedMessages,
    TokenizerNotFixed,
    UnknownTemplate,
    chat_template_pairs,
    encode_multiturn,
    fix_tokenizer,
    format_turns,
    get_template,
)
from worker.templates.table import BOS, EOS
from worker.templates.tools import UnknownToolFormat

TINY_CHAT = Path(__file__).resolve().parents[2] / "configs" / "models" / "tiny-chat"
SYSTEM = "Be brief."
CONV = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Goodbye."},
]
THINK = "<think>\n\n</think>\n\n"  # LF's add_thought(): thought_words ("<think>\n", "\n</think>\n\n") joined

# Every template, CONV with system=SYSTEM: [(prompt elements, response elements), ...] per answer.
WITH_SYSTEM = {
    "default": [
        (["System: Be brief.", EOS, "\n", "Human: Hi", EOS, "\nAssistant:"], ["Hello!", EOS, "\n"]),
        (["Human: Bye", EOS, "\nAssistant:"], ["Goodbye.", EOS, "\n"]),
    ],
    "empty": [(["Be brief.", "Hi"], ["Hello!"]), (["Bye"], ["Goodbye."])],
    "alpaca": [
        (["Be brief.", "### Instruction:\nHi\n\n### Response:\n"], ["Hello!", EOS, "\n\n"]),
        (["### Instruction:\nBye\n\n### Response:\n"], ["Goodbye.", EOS, "\n\n"]),
    ],
    "chatml": [
        (["<|im_start|>system\nBe brief.<|im_end|>\n", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"],
         ["Hello!<|im_end|>\n"]),
        (["<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"], ["Goodbye.<|im_end|>\n"]),
    ],
    "chatml_de": [
        (["<|im_start|>system\nBe brief.<|im_end|>\n", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"],
         ["Hello!<|im_end|>\n"]),
        (["<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"], ["Goodbye.<|im_end|>\n"]),
    ],
    "qwen": [
        (["<|im_start|>system\nBe brief.<|im_end|>\n", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"],
         ["Hello!<|im_end|>\n"]),
        (["<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"], ["Goodbye.<|im_end|>\n"]),
    ],
    "qwen3": [
        (["<|im_start|>system\nBe brief.<|im_end|>\n", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"],
         ["<think>\n\n</think>\n\n", "Hello!<|im_end|>\n"]),
        (["<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"],
         ["<think>\n\n</think>\n\n", "Goodbye.<|im_end|>\n"]),
    ],
    "qwen3_nothink": [
        (["<|im_start|>system\nBe brief.<|im_end|>\n", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"],
         ["Hello!<|im_end|>\n"]),
        (["<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"], ["Goodbye.<|im_end|>\n"]),
    ],
    "llama2": [
        ([BOS, "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"], ["Hello!", EOS]),
        ([BOS, "[INST] Bye [/INST]"], ["Goodbye.", EOS]),
    ],
    "llama3": [
        ([BOS, "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>",
          "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"],
         ["Hello!<|eot_id|>"]),
        (["<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"],
         ["Goodbye.<|eot_id|>"]),
    ],
    "mistral": [
        ([BOS, "[INST] Be brief.\n\nHi[/INST]"], [" Hello!", EOS]),
        (["[INST] Bye[/INST]"], [" Goodbye.", EOS]),
    ],
    "gemma": [
        ([BOS, "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"], ["Hello!<end_of_turn>\n"]),
        (["<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"], ["Goodbye.<end_of_turn>\n"]),
    ],
    "gemma2": [
        ([BOS, "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"], ["Hello!<end_of_turn>\n"]),
        (["<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"], ["Goodbye.<end_of_turn>\n"]),
    ],
    "deepseek3": [
        ([BOS, "Be brief.", "<｜User｜>Hi<｜Assistant｜>"], ["Hello!", EOS]),
        (["<｜User｜>Bye<｜Assistant｜>"], ["Goodbye.", EOS]),
    ],
    "deepseekr1": [
        ([BOS, "Be brief.", "<｜User｜>Hi<｜Assistant｜>"], ["<think>\n\n</think>\n\n", "Hello!", EOS]),
        (["<｜User｜>Bye<｜Assistant｜>"], ["<think>\n\n</think>\n\n", "Goodbye.", EOS]),
    ],
}  # fmt: skip

# The same conversation with no system: only the first prompt changes, and shows the default system.
FIRST_PROMPT_WITHOUT_SYSTEM = {
    "default": ["Human: Hi", EOS, "\nAssistant:"],
    "empty": ["Hi"],
    "alpaca": [
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n",
        "### Instruction:\nHi\n\n### Response:\n",
    ],
    "chatml": ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"],
    "chatml_de": ["<|im_start|>system\nDu bist ein freundlicher und hilfsbereiter KI-Assistent.<|im_end|>\n",
                  "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"],
    "qwen": ["<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n",
             "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"],
    "qwen3": ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"],
    "qwen3_nothink": ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"],
    "llama2": [BOS, "[INST] Hi [/INST]"],
    "llama3": [BOS,
               "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"],
    "mistral": [BOS, "[INST] Hi[/INST]"],
    "gemma": [BOS, "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"],
    "gemma2": [BOS, "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"],
    "deepseek3": [BOS, "<｜User｜>Hi<｜Assistant｜>"],
    "deepseekr1": [BOS, "<｜User｜>Hi<｜Assistant｜>"],
}  # fmt: skip

# (bos, eos) of the model family each template is for, as its tokenizer ships them.
LLAMA, QWEN = ("<s>", "</s>"), (None, "<|endoftext|>")
FAMILY = {
    "default": LLAMA, "empty": LLAMA, "alpaca": LLAMA, "llama2": LLAMA, "mistral": LLAMA,
    "chatml": QWEN, "chatml_de": QWEN, "qwen": QWEN, "qwen3": QWEN, "qwen3_nothink": QWEN,
    "llama3": ("<|begin_of_text|>", "<|end_of_text|>"),
    "gemma": ("<bos>", "<eos>"), "gemma2": ("<bos>", "<eos>"),
    "deepseek3": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "deepseekr1": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
}  # fmt: skip
# No "<|eom_id|>": llama3's fix must add it.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|end_of_text|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "[INST]", "[/INST]", "<start_of_turn>",
    "<end_of_turn>", "<bos>", "<eos>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>",
    "<｜Assistant｜>", "<think>", "</think>",
]  # fmt: skip


@pytest.fixture(scope="module")
def backend() -> str:
    """A tiny byte-level BPE with every template's special tokens, serialized: tests never download."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = ["Hello! Goodbye. Be brief. Human: Assistant: System: Instruction Response user assistant model"] * 5
    tok.train_from_iterator(corpus + ["prefix"] * 20, trainer)
    return tok.to_str()


def make_tokenizer(backend: str, bos: str | None, eos: str | None) -> PreTrainedTokenizerFast:
    """A fresh tokenizer per test: fix_tokenizer changes the one it is given."""
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(backend), bos_token=bos, eos_token=eos)


def ids_by_lf_rule(tok: PreTrainedTokenizerFast, elements: list) -> list[int]:
    """LF's _convert_elements_to_ids, written again: each string on its own, bos / eos by id."""
    ids: list[int] = []
    for element in elements:
        if element is BOS:
            ids += [tok.bos_token_id] if tok.bos_token_id is not None else []
        elif element is EOS:
            ids += [tok.eos_token_id]
        elif element:
            ids += tok.encode(element, add_special_tokens=False)
    return ids


def as_text(tok: PreTrainedTokenizerFast, elements: list) -> str:
    return "".join(tok.bos_token if e is BOS else tok.eos_token if e is EOS else e for e in elements)


def test_every_template_has_a_fixture() -> None:
    assert set(TEMPLATE_NAMES) == set(WITH_SYSTEM) == set(FIRST_PROMPT_WITHOUT_SYSTEM) == set(FAMILY)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_elements_are_lfs(name: str) -> None:
    template = get_template(name)
    assert [(p, r) for p, r in format_turns(template, CONV, SYSTEM)] == [tuple(pair) for pair in WITH_SYSTEM[name]]
    without = [tuple(pair) for pair in WITH_SYSTEM[name]]
    without[0] = (FIRST_PROMPT_WITHOUT_SYSTEM[name], without[0][1])
    assert format_turns(template, CONV) == without
    assert format_turns(template, CONV, system="") == without  # LF: `system or default_system`


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_ids_follow_lfs_per_element_rule(name: str, backend: str) -> None:
    template = get_template(name)
    tok = make_tokenizer(backend, *FAMILY[name])
    fix_tokenizer(template, tok)

    pairs = encode_multiturn(template, tok, CONV, SYSTEM)

    expected = WITH_SYSTEM[name]
    assert pairs == [(ids_by_lf_rule(tok, p), ids_by_lf_rule(tok, r)) for p, r in expected]
    decoded = tok.decode([i for p, r in pairs for i in p + r], skip_special_tokens=False)
    assert decoded == "".join(as_text(tok, p) + as_text(tok, r) for p, r in expected)


def test_each_string_element_is_tokenized_on_its_own(backend: str) -> None:
    tok = make_tokenizer(backend, None, "</s>")

    def enc(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    assert enc("prefix") != enc("pre") + enc("fix")  # this tokenizer merges across the join
    conv = [{"role": "user", "content": "fix"}, {"role": "assistant", "content": "Hello!"}]
    [(prompt, answer)] = encode_multiturn(get_template("empty"), tok, conv, system="pre")
    assert (prompt, answer) == (enc("pre") + enc("fix"), enc("Hello!"))


@pytest.mark.parametrize(
    ("name", "eos", "new_tokens"),
    [("qwen", "<|im_end|>", 0), ("gemma", "<end_of_turn>", 0), ("llama3", "<|eot_id|>", 1), ("default", "</s>", 0)],
)
def test_fix_tokenizer_replaces_eos_and_adds_stop_words(name: str, eos: str, new_tokens: int, backend: str) -> None:
    template = get_template(name)
    tok = make_tokenizer(backend, *FAMILY[name])

    fix = fix_tokenizer(template, tok)

    assert tok.eos_token == eos and tok.pad_token == eos
    assert fix.new_tokens == new_tokens
    if name == "llama3":  # the second stop word is special now: never split
        assert tok.encode("<|eom_id|>", add_special_tokens=False) == [tok.convert_tokens_to_ids("<|eom_id|>")]
        assert "'<|eom_id|>' made special tokens" in fix.changes[-1]
    assert fix_tokenizer(template, tok).new_tokens == 0  # a second fix changes nothing more


def test_gemma2_stop_words_become_special_and_eos_stays(backend: str) -> None:
    tok = make_tokenizer(backend, "<bos>", "<eos>")
    fix = fix_tokenizer(get_template("gemma2"), tok)
    assert tok.eos_token == "<eos>" and fix.new_tokens == 0


def test_encoding_refuses_a_tokenizer_that_was_not_fixed(backend: str) -> None:
    tok = make_tokenizer(backend, None, "<|endoftext|>")
    with pytest.raises(TokenizerNotFixed, match=r"'<\|im_end\|>'.*fix_tokenizer"):
        encode_multiturn(get_template("qwen"), tok, CONV)
    with pytest.raises(TokenizerNotFixed):
        encode_multiturn(get_template("default"), make_tokenizer(backend, None, None), CONV)


def test_gemma2_pairs_through_supervised_encoding_label_eos_where_the_next_prompt_starts(backend: str) -> None:
    template = get_template("gemma2")  # efficient_eos: its answers end in <end_of_turn>, not in eos
    tok = make_tokenizer(backend, *FAMILY["gemma2"])
    fix_tokenizer(template, tok)
    (p1, r1), (p2, r2) = encode_multiturn(template, tok, CONV, SYSTEM)

    eos = tok.eos_token_id
    example = encode_supervised([(p1, r1), (p2, r2)], 1000, efficient_eos=True, eos_token_id=eos)

    assert example["input_ids"] == p1 + r1 + p2 + r2 + [eos]
    masked = [IGNORE_INDEX] * (len(p2) - 1)
    assert example["labels"] == [IGNORE_INDEX] * len(p1) + r1 + [eos] + masked + r2 + [eos]


def test_unknown_template_names_the_ones_ftq_has() -> None:
    with pytest.raises(UnknownTemplate, match="'qwen9'.*alpaca, chatml") as info:
        get_template("qwen9")
    assert isinstance(info.value, ValueError)
    assert all(name in str(info.value) for name in TEMPLATE_NAMES)


def test_unknown_tool_format_names_the_supported_ones() -> None:
    with pytest.raises(UnknownToolFormat, match="'glm4'.*default, llama3, mistral, qwen"):
        get_template("qwen", tool_format="glm4")


def test_default_system_overrides_the_templates() -> None:
    template = get_template("qwen", default_system="Be kind.")
    assert format_turns(template, CONV[:2])[0][0][0] == "<|im_start|>system\nBe kind.<|im_end|>\n"
    assert format_turns(template, CONV[:2], SYSTEM)[0][0][0] == "<|im_start|>system\nBe brief.<|im_end|>\n"


def test_messages_must_be_prompt_answer_pairs() -> None:
    with pytest.raises(MalformedMessages, match="3 messages"):
        format_turns(get_template("qwen"), CONV[:3])
    with pytest.raises(MalformedMessages, match="message 2 has role 'user'"):
        format_turns(get_template("qwen"), [CONV[0], CONV[0]])


# --- reasoning: qwen3 is LF's ReasoningTemplate, qwen3_nothink a plain one -----------------------------------

THOUGHTFUL = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Goodbye."},
]
PROMPT_1 = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
PROMPT_2 = "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"


def test_qwen3_thinking_trains_on_the_empty_thought_and_keeps_a_real_one() -> None:
    assert format_turns(get_template("qwen3"), THOUGHTFUL) == [
        ([PROMPT_1], ["<think>\nGreet back.\n</think>\n\nHello!<|im_end|>\n"]),
        ([PROMPT_2], [THINK, "Goodbye.<|im_end|>\n"]),
    ]


def test_qwen3_without_thinking_drops_thoughts_and_puts_the_empty_one_in_the_prompt() -> None:
    assert format_turns(get_template("qwen3", enable_thinking=False), THOUGHTFUL) == [
        ([PROMPT_1, THINK], ["Hello!<|im_end|>\n"]),
        ([PROMPT_2, THINK], ["Goodbye.<|im_end|>\n"]),
    ]


def test_qwen3_enable_thinking_none_keeps_thoughts_but_prompts_the_empty_one() -> None:
    # LF: only `is False` removes thoughts, while `not enable_thinking` places the empty one
    assert format_turns(get_template("qwen3", enable_thinking=None), THOUGHTFUL) == [
        ([PROMPT_1], ["<think>\nGreet back.\n</think>\n\nHello!<|im_end|>\n"]),
        ([PROMPT_2, THINK], ["Goodbye.<|im_end|>\n"]),
    ]


def test_qwen3_discarding_history_cot_keeps_only_the_last_answers_thought() -> None:
    assert format_turns(get_template("qwen3"), THOUGHTFUL, discarding_history_cot=True) == [
        ([PROMPT_1], ["Hello!<|im_end|>\n"]),
        ([PROMPT_2], [THINK, "Goodbye.<|im_end|>\n"]),
    ]


@pytest.mark.parametrize("enable_thinking", [True, False, None])
def test_qwen3_nothink_never_touches_thoughts(enable_thinking: bool | None) -> None:
    assert format_turns(get_template("qwen3_nothink", enable_thinking=enable_thinking), THOUGHTFUL) == [
        ([PROMPT_1], ["<think>\nGreet back.\n</think>\n\nHello!<|im_end|>\n"]),
        ([PROMPT_2], ["Goodbye.<|im_end|>\n"]),
    ]


# --- tools ---------------------------------------------------------------------------------------------------

TOOLS = json.dumps([{
    "name": "get_weather", "description": "Weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name."}},
                   "required": ["city"]},
}])  # fmt: skip
TOOL_CONV = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "function", "content": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
    {"role": "observation", "content": '"Sunny"'},
    {"role": "assistant", "content": "It is sunny."},
]
DEFAULT_TOOL_TEXT = (
    "You have access to the following tools:\n"
    "> Tool Name: get_weather\nTool Description: Weather of a city.\nTool Args:\n"
    "  - city (string, required): City name.\n\n"
    "Use the following format if using a tool:\n```\nAction: tool name (one of [get_weather])\n"
    "Action Input: the input to the tool, in a JSON format representing the kwargs "
    '(e.g. ```{"input": "hello world", "num_beams": 5}```)\n```\n'
)
QWEN_TOOL_TEXT = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city.", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name."}}, '
    '"required": ["city"]}}}\n</tools>\n\n'
    "For each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)


def test_default_tool_format_in_the_default_template() -> None:
    assert format_turns(get_template("default"), TOOL_CONV, SYSTEM, TOOLS) == [
        (["System: Be brief." + DEFAULT_TOOL_TEXT, EOS, "\n", "Human: Weather in Paris?", EOS, "\nAssistant:"],
         ['Action: get_weather\nAction Input: {"city": "Paris"}', EOS, "\n"]),
        (['Human: "Sunny"', EOS, "\nAssistant:"], ["It is sunny.", EOS, "\n"]),
    ]  # fmt: skip


def test_qwen_tool_format_in_the_qwen_template() -> None:
    assert format_turns(get_template("qwen"), TOOL_CONV, SYSTEM, TOOLS) == [
        (["<|im_start|>system\nBe brief." + QWEN_TOOL_TEXT + "<|im_end|>\n",
          "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"],
         ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n']),
        (['<|im_start|>user\n<tool_response>\n"Sunny"\n</tool_response><|im_end|>\n<|im_start|>assistant\n'],
         ["It is sunny.<|im_end|>\n"]),
    ]  # fmt: skip


def test_tools_without_a_system_follow_the_default_system() -> None:
    first = format_turns(get_template("qwen"), TOOL_CONV, None, TOOLS)[0][0][0]
    assert first == "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant." + (
        QWEN_TOOL_TEXT + "<|im_end|>\n"
    )
    assert format_turns(get_template("qwen3"), TOOL_CONV, None, TOOLS)[0][0][0] == (
        "<|im_start|>system\n" + QWEN_TOOL_TEXT + "<|im_end|>\n"
    )
    assert format_turns(get_template("qwen"), TOOL_CONV, SYSTEM, "[]")[0][0][0] == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
    )


def test_a_tool_format_override_resets_the_function_slots_as_lf_does() -> None:
    [(_, call), _] = format_turns(get_template("qwen", tool_format="default"), TOOL_CONV, SYSTEM, TOOLS)
    assert call == ['Action: get_weather\nAction Input: {"city": "Paris"}', EOS]


def test_a_thought_before_a_tool_call_is_kept_in_front_of_it() -> None:
    conv = [dict(m) for m in TOOL_CONV]
    conv[1]["content"] = '<think>\nLook it up.\n</think>\n\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
    [(_, call), (_, answer)] = format_turns(get_template("qwen3"), conv, SYSTEM, TOOLS)
    assert call == [
        '<think>\nLook it up.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n"
    ]
    assert answer == [THINK, "It is sunny.<|im_end|>\n"]


def test_llama3_and_mistral_tool_formats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tool_formats, "_today", lambda: "26 Jul 2024")
    [(prompt, call), _] = format_turns(get_template("llama3"), TOOL_CONV, SYSTEM, TOOLS)
    assert prompt[1].startswith(
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.Cutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\nYou have access to the following functions."
    )
    assert prompt[1].endswith('"required": [\n                "city"\n            ]\n        }\n    }\n}\n\n<|eot_id|>')
    assert call == ['{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>']

    [(prompt, call), (observation, _)] = format_turns(get_template("mistral"), TOOL_CONV, SYSTEM, TOOLS)
    wrapped = json.dumps([{"type": "function", "function": json.loads(TOOLS)[0]}])
    assert prompt == [BOS, f"[INST] Be brief.[AVAILABLE_TOOLS] {wrapped}[/AVAILABLE_TOOLS]\n\nWeather in Paris?[/INST]"]
    assert call == ['[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]', EOS]
    assert observation == ['[TOOL_RESULTS] {"content": "Sunny"}[/TOOL_RESULTS]']


# --- the tokenizer's own chat template -----------------------------------------------------------------------


@pytest.fixture
def tiny_chat() -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(str(TINY_CHAT), local_files_only=True)


def test_the_demo_tokenizers_template_agrees_with_lfs_chatml(tiny_chat: PreTrainedTokenizerFast) -> None:
    conv = CONV + [{"role": "observation", "content": "Sunny"}, {"role": "assistant", "content": "Nice."}]
    own = chat_template_pairs(tiny_chat, conv, SYSTEM)
    template = get_template("chatml")
    assert fix_tokenizer(template, tiny_chat).new_tokens == 0  # its eos is already <|im_end|>
    assert encode_multiturn(template, tiny_chat, conv, SYSTEM) == own
    prompt, answer = own[0]
    assert tiny_chat.decode(prompt) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tiny_chat.decode(answer) == "Hello!<|im_end|>\n"
    assert tiny_chat.decode(own[2][0]) == "<|im_start|>tool\nSunny<|im_end|>\n<|im_start|>assistant\n"


def test_chat_template_pairs_passes_tools_and_maps_function_to_assistant(backend: str) -> None:
    tok = make_tokenizer(backend, None, "<|im_end|>")
    tok.chat_template = (
        "{% if tools %}[{{ tools[0]['name'] }}]{% endif %}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}"
        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    pairs = chat_template_pairs(tok, TOOL_CONV, None, TOOLS)
    texts = [(tok.decode(p), tok.decode(r)) for p, r in pairs]
    assert texts == [
        ("[get_weather]<user>Weather in Paris?<assistant>", '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
        ('<tool>"Sunny"<assistant>', "It is sunny."),
    ]  # fmt: skip


def test_chat_template_pairs_needs_a_chat_template(backend: str) -> None:
    with pytest.raises(ChatTemplateError, match="no chat_template"):
        chat_template_pairs(make_tokenizer(backend, None, "</s>"), CONV)


def test_chat_template_pairs_refuses_a_template_that_rewrites_earlier_turns(backend: str) -> None:
    tok = make_tokenizer(backend, None, "</s>")
    tok.chat_template = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ChatTemplateError, match="growing prefix"):
        chat_template_pairs(tok, CONV)
