"""The one step from a conversation to token ids: `make_encoder(spec, tokenizer)(conversation)`.

Everything that turns a Conversation (worker.convert) into input_ids /
attention_mask / labels goes through the encoder make_encoder returns, so that
how a conversation is encoded is decided in one place. Today it is the
tokenizer's own chat template (labels on assistant turns only); LLaMA-Factory's
templates (`template`, `train_on_prompt`, `mask_history`) plug in here.
ENCODING_VERSION names the encoding: a saved tokenized set records it, and one
made by another version is rebuilt, so bump it whenever the same input would
give other ids.

The encoder is a picklable object: `datasets.map` hands it to its worker
processes when preprocessing_num_workers > 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.convert import ASSISTANT, FUNCTION, OBSERVATION, Conversation
from worker.dataset_info import DataError

IGNORE_INDEX = -100
ENCODING_VERSION = 1

Encoded = dict[str, list[int]]  # input_ids, attention_mask, labels
Encoder = Callable[[Conversation], Encoded | None]  # None: nothing left to learn within cutoff_len


def make_encoder(spec: Any, tokenizer: Any) -> Encoder:
    """The encoder for this job; raises DataError when it cannot encode at all (no chat template)."""
    require_chat_template(tokenizer)
    return ChatTemplateEncoder(tokenizer, spec.cutoff_len)


@dataclass
class ChatTemplateEncoder:
    tokenizer: Any
    cutoff_len: int

    def __call__(self, conv: Conversation) -> Encoded | None:
        return tokenize_conversation(self.tokenizer, conv, self.cutoff_len)


def require_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat_template; ftq renders conversations with the model's own template")


def chat_messages(conv: Conversation) -> list[dict[str, str]]:
    """LLaMA-Factory's roles in a chat template's: the system prompt first, a tool call is the assistant
    speaking (and trained on), a tool result is a `tool` message."""
    roles = {FUNCTION: ASSISTANT, OBSERVATION: "tool"}
    system = [{"role": "system", "content": conv.system}] if conv.system else []
    return system + [{"role": roles.get(m["role"], m["role"]), "content": m["content"]} for m in conv.messages]


def tokenize_conversation(tokenizer: Any, conv: Conversation, cutoff_len: int) -> Encoded | None:
    """Token ids with labels on assistant turns only; None when truncation leaves nothing to learn."""
    require_chat_template(tokenizer)
    tools = json.loads(conv.tools) if conv.tools else None

    def render(messages: list[dict[str, str]], generation: bool = False) -> str:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation)

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    input_ids: list[int] = []
    labels: list[int] = []
    done = ""  # the text already tokenized
    msgs = chat_messages(conv)
    # Render growing prefixes: what comes before assistant turn k is prompt, turn k itself is labelled.
    for k, message in enumerate(msgs):
        if message["role"] != ASSISTANT:
            continue
        prompt, answered = render(msgs[:k], generation=True), render(msgs[: k + 1])
        if not prompt.startswith(done) or not answered.startswith(prompt):
            raise DataError(
                "the chat template does not render a conversation as a growing prefix "
                "(it rewrites earlier turns), so assistant turns cannot be located"
            )
        prompt_ids, answer_ids = encode(prompt[len(done) :]), encode(answered[len(prompt) :])
        input_ids += prompt_ids + answer_ids
        labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        done = answered
    input_ids, labels = input_ids[:cutoff_len], labels[:cutoff_len]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}
