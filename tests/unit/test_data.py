"""worker.data.pipeline: LLaMA-Factory's dataset_info.json formats to chat messages to labelled tokens."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import PreTrainedTokenizerFast

from tests.unit.data_helpers import OPENAI_ENTRY, chat, make_tokenizer, write_dataset
from worker.data.encode import make_encoder
from worker.data.pipeline import (
    IGNORE_INDEX,
    Conversation,
    DataError,
    PadCollator,
    build_datasets,
    load_conversations,
    split_examples,
)
from worker.templates.render import CHAT_ROLES


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def test_alpaca_joins_instruction_and_input_and_keeps_history_and_system(tmp_path: Path) -> None:
    # LLaMA-Factory: an entry that gives `columns` names every column it reads (the rest are None).
    columns = {"prompt": "instruction", "query": "input", "response": "output", "system": "sys", "history": "history"}
    info = {"faq": {"file_name": "faq.json", "columns": columns}}
    rows = [
        {"instruction": "Summarise", "input": "the order shipped", "output": "Shipped.", "sys": "Be brief.",
         "history": [["hi", "hello"]]},
        {"instruction": "Say hi", "input": "", "output": "Hi!"},
    ]  # fmt: skip
    (tmp_path / "faq.json").write_text(json.dumps(rows))  # a JSON array, not lines
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))

    first, second = load_conversations(["faq"], tmp_path, None)

    assert first.system == "Be brief."
    assert first.messages == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "Summarise\nthe order shipped"},
        {"role": "assistant", "content": "Shipped."},
    ]
    assert second.messages == [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}]
    assert second.system is None


def test_sharegpt_default_tags_keep_function_and_observation_roles_and_system_and_tools_apart(tmp_path: Path) -> None:
    tools = [{"name": "track", "parameters": {"type": "object"}}]
    row = {
        "tools": json.dumps(tools),
        "conversations": [
            {"from": "system", "value": "You are support."},
            {"from": "human", "value": "Track order 7"},
            {"from": "function_call", "value": '{"name": "track"}'},
            {"from": "observation", "value": '{"status": "shipped"}'},
            {"from": "gpt", "value": "It shipped."},
        ],
    }
    columns = {"messages": "conversations", "tools": "tools"}
    entry = {"file_name": "sg.jsonl", "formatting": "sharegpt", "columns": columns}
    write_dataset(tmp_path, {"sg": entry}, {"sg.jsonl": [row]})

    (conv,) = load_conversations(["sg"], tmp_path, None)

    # LLaMA-Factory's roles: a template (or the chat-template path) decides how each is rendered.
    assert [m["role"] for m in conv.messages] == ["user", "function", "observation", "assistant"]
    assert conv.system == "You are support."
    assert json.loads(conv.tools) == tools
    # The chat-template path: a call is the assistant's, a result a tool message.
    assert [CHAT_ROLES[m["role"]] for m in conv.messages] == ["user", "assistant", "tool", "assistant"]


def test_tools_given_as_a_list_become_json_text_and_tags_an_entry_leaves_out_are_none(tmp_path: Path) -> None:
    tools = [{"name": "track"}]
    rows = [
        {**chat(("user", "a"), ("assistant", "b")), "tools": tools},
        chat(("user", "a"), ("observation", "b")),  # the entry's tags name no observation_tag: no such role
    ]
    entry = {**OPENAI_ENTRY, "columns": {"messages": "messages", "tools": "tools"}}
    write_dataset(tmp_path, {"cs": entry}, {"chat.jsonl": rows})

    (conv,) = load_conversations(["cs"], tmp_path, None)

    assert json.loads(conv.tools) == tools


def test_openai_messages_format_with_tags(tmp_path: Path) -> None:
    rows = [chat(("system", "Be kind."), ("user", "Where is my parcel?"), ("assistant", "On its way."))]
    write_dataset(tmp_path, {"cs": OPENAI_ENTRY}, {"chat.jsonl": rows})

    (conv,) = load_conversations(["cs"], tmp_path, None)

    assert conv.system == "Be kind."
    assert conv.messages == rows[0]["messages"][1:]


def test_malformed_alternation_is_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = chat(("user", "a"), ("assistant", "b"))
    rows = [
        good,
        chat(("user", "a"), ("user", "b")),  # two user turns in a row
        chat(("assistant", "a"), ("user", "b")),  # starts with the assistant
        chat(("user", "a"), ("assistant", "b"), ("user", "c")),  # ends on the user
        {"messages": "not a list"},
    ]
    write_dataset(tmp_path, {"cs": OPENAI_ENTRY}, {"chat.jsonl": rows})

    conversations = load_conversations(["cs"], tmp_path, None)

    assert [c.messages for c in conversations] == [good["messages"]]
    assert "skipped 4 malformed examples of 5" in caplog.text


def test_all_malformed_is_an_error(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"cs": OPENAI_ENTRY}, {"chat.jsonl": [chat(("user", "a"))]})
    with pytest.raises(DataError, match="'cs': no usable example"):
        load_conversations(["cs"], tmp_path, None)


def test_unknown_dataset_names_it_and_lists_known_names(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"cs": OPENAI_ENTRY, "faq": {"file_name": "chat.jsonl"}}, {"chat.jsonl": []})
    with pytest.raises(DataError) as info:
        load_conversations(["cs", "billing"], tmp_path, None)
    assert "'billing'" in str(info.value)
    assert "known: cs, faq" in str(info.value)


def test_hub_only_entry_is_a_clear_error(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"alpaca_en": {"hf_hub_url": "llamafactory/alpaca_en"}}, {})
    with pytest.raises(DataError, match="only on a hub.*no network"):
        load_conversations(["alpaca_en"], tmp_path, None)


def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"cs": OPENAI_ENTRY}, {"chat.jsonl": json.dumps(chat(("user", "a"))) + "\n{oops\n"})
    with pytest.raises(DataError, match=r"chat\.jsonl line 2 column 2"):
        load_conversations(["cs"], tmp_path, None)


def test_a_line_that_is_not_utf8_names_the_file_and_the_line(tmp_path: Path) -> None:
    good = json.dumps(chat(("user", "a"), ("assistant", "b")))
    write_dataset(tmp_path, {"cs": OPENAI_ENTRY}, {})
    (tmp_path / "chat.jsonl").write_bytes(f"{good}\n{good}\n".encode() + b'{"messages": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"'cs': .*chat\.jsonl is not UTF-8 text: line 3, column 18"):
        load_conversations(["cs"], tmp_path, None)


def test_a_dataset_info_rewritten_to_point_outside_the_input_dirs_is_refused_when_read(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "secret.jsonl").write_text(json.dumps(chat(("user", "a"), ("assistant", "b"))) + "\n")
    roots = [str(tmp_path / "in")]
    write_dataset(tmp_path / "in", {"cs": {**OPENAI_ENTRY, "file_name": "../secret.jsonl"}}, {})
    with pytest.raises(DataError, match=r"'cs': .*secret\.jsonl leads outside the directories this daemon may read"):
        load_conversations(["cs"], tmp_path / "in", None, roots)
    # A link inside the directory leads out as well; unconfined (a worker run by hand) it is read.
    write_dataset(tmp_path / "in", {"cs": OPENAI_ENTRY}, {})
    (tmp_path / "in/chat.jsonl").symlink_to(tmp_path / "secret.jsonl")
    with pytest.raises(DataError, match="chat.jsonl leads outside"):
        load_conversations(["cs"], tmp_path / "in", None, roots)
    assert len(load_conversations(["cs"], tmp_path / "in", None)) == 1


def test_a_fifo_as_a_dataset_file_is_refused_without_blocking(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"cs": OPENAI_ENTRY}, {})
    os.mkfifo(tmp_path / "chat.jsonl")
    with pytest.raises(DataError, match="chat.jsonl is a FIFO"):
        load_conversations(["cs"], tmp_path, None, [str(tmp_path)])


def test_max_samples_caps_each_dataset_and_datasets_concatenate(tmp_path: Path) -> None:
    rows = [chat(("user", f"q{i}"), ("assistant", f"a{i}")) for i in range(5)]
    info = {"a": OPENAI_ENTRY, "b": {**OPENAI_ENTRY, "file_name": "other.jsonl"}}
    write_dataset(tmp_path, info, {"chat.jsonl": rows, "other.jsonl": rows[:1]})

    conversations = load_conversations(["a", "b"], tmp_path, max_samples=2)

    assert [c.messages[0]["content"] for c in conversations] == ["q0", "q1", "q0"]


@pytest.mark.parametrize(("val_size", "expected_eval"), [(0.25, 3), (4, 4), (0.0, 0)])
def test_val_size_fraction_or_count(val_size: float, expected_eval: int) -> None:
    examples = list(range(10))
    train, held_out = split_examples(examples, val_size, seed=1)
    assert len(held_out) == expected_eval
    assert sorted(train + held_out) == examples
    assert split_examples(examples, val_size, seed=1) == (train, held_out)  # seeded: the same split again


def test_val_size_that_leaves_nothing_to_train_is_an_error() -> None:
    with pytest.raises(DataError, match="leaving none to train"):
        split_examples([1, 2], 2, seed=0)


def test_only_assistant_tokens_are_labelled(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    row = chat(("system", "Be kind."), ("user", "where is my order"), ("assistant", "your refund"),
               ("user", "hello"), ("assistant", "how can I help"))  # fmt: skip
    write_dataset(tmp_path, {"cs": OPENAI_ENTRY}, {"chat.jsonl": [row]})
    (conv,) = load_conversations(["cs"], tmp_path, None)

    example = chat_template_encoder(tokenizer, cutoff_len=1024)(conv)

    assert example is not None
    turns = [("system", "Be kind."), ("user", "where is my order"), ("assistant", "your refund"),
             ("user", "hello"), ("assistant", "how can I help")]  # fmt: skip
    full_text = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in turns], tokenize=False)
    assert tokenizer.decode(example["input_ids"]) == full_text
    spans = labelled_spans(example["labels"])
    decoded = [tokenizer.decode(span) for span in spans]
    assert decoded == ["your refund<|im_end|>\n", "how can I help<|im_end|>\n"]


def chat_template_encoder(tokenizer: PreTrainedTokenizerFast, cutoff_len: int):
    """The encoder a job without `template` gets: the tokenizer's own chat template."""
    return make_encoder(SimpleNamespace(cutoff_len=cutoff_len, template=None), tokenizer)


def labelled_spans(labels: list[int]) -> list[list[int]]:
    spans: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                spans.append([])
            spans[-1].append(label)
        previous = label
    return spans


def test_truncation_at_cutoff_len_and_drop_when_no_label_left(tokenizer: PreTrainedTokenizerFast) -> None:
    conv = Conversation([{"role": "user", "content": "where is my order " * 3}, {"role": "assistant", "content": "ok"}])
    encode = chat_template_encoder(tokenizer, cutoff_len=10_000)
    full = encode(conv)
    assert full is not None
    prompt_len = full["labels"].index(next(label for label in full["labels"] if label != IGNORE_INDEX))
    answer = full["labels"][prompt_len:]

    cut = chat_template_encoder(tokenizer, cutoff_len=prompt_len + 1)(conv)
    assert cut is not None
    assert len(cut["input_ids"]) == len(cut["labels"]) == len(cut["attention_mask"]) == prompt_len + 1
    assert cut["labels"][-1] != IGNORE_INDEX
    # LLaMA-Factory's per-turn truncation (infer_seqlen): a short answer is kept whole, the prompt gives way.
    assert cut["labels"][-len(answer) :] == answer

    assert chat_template_encoder(tokenizer, cutoff_len=1)(conv) is None


def test_tokenizer_without_chat_template_is_a_clear_error(tokenizer: PreTrainedTokenizerFast) -> None:
    bare = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|im_end|>")
    with pytest.raises(DataError, match="no chat_template"):
        chat_template_encoder(bare, cutoff_len=10)


def test_build_datasets_and_collator_pad_right(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    rows = [chat(("user", "hello" * (i + 1)), ("assistant", "ok")) for i in range(6)]
    write_dataset(tmp_path, {"cs": OPENAI_ENTRY}, {"chat.jsonl": rows})
    spec = SimpleNamespace(
        dataset_names=["cs"], dataset_dir=str(tmp_path), max_samples=None, cutoff_len=64, val_size=2, seed=0
    )

    train, held_out, collator = build_datasets(spec, tokenizer)

    assert (len(train), len(held_out)) == (4, 2)
    batch = collator([train[0], train[3]])
    short, long = (len(train[i]["input_ids"]) for i in (0, 3))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, max(short, long))
    padded = 0 if short < long else 1
    pad_len = abs(long - short)
    assert batch["input_ids"][padded, -pad_len:].tolist() == [tokenizer.pad_token_id] * pad_len
    assert batch["attention_mask"][padded, -pad_len:].tolist() == [0] * pad_len
    assert batch["labels"][padded, -pad_len:].tolist() == [IGNORE_INDEX] * pad_len
    assert isinstance(collator, PadCollator)
