"""What the data tests share: a tiny tokenizer built in the test, dataset_info.json writers, chat rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

OPENAI_ENTRY = {
    "file_name": "chat.jsonl",
    "formatting": "sharegpt",
    "columns": {"messages": "messages"},
    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
             "system_tag": "system"},
}  # fmt: skip


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE with a ChatML template, built here: tests never download."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["where is my order", "your refund has been issued", "hello, how can I help"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def write_dataset(tmp_path: Path, info: dict, files: dict[str, list | str]) -> Path:
    """dataset_info.json and JSON-lines files (a list of rows) or raw text files, in tmp_path."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    for name, rows in files.items():
        text = rows if isinstance(rows, str) else "\n".join(json.dumps(row) for row in rows)
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def chat(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


def qa(i: int, tag: str = "q") -> dict[str, Any]:
    return chat(("user", f"{tag}{i}"), ("assistant", f"a{i}"))
