"""The one step from a conversation to token ids: `make_encoder(spec, tokenizer)(conversation)`.

Everything that turns a Conversation (worker.data.convert) into input_ids /
attention_mask / labels goes through the encoder make_encoder returns, so that
how a conversation is encoded is decided in one place: its turns as
(prompt, answer) ids by a LLaMA-Factory template (worker.templates.render) or, with no
`template`, by the tokenizer's own chat template, then LLaMA-Factory's supervised
encoding of them (worker.data.supervised: per-turn truncation, train_on_prompt,
mask_history, efficient_eos).
ENCODING_VERSION names the encoding: a saved tokenized set records it, and one
made by another version is rebuilt, so bump it whenever the same input would
give other ids.

The encoder is a picklable object: `datasets.map` hands it to its worker
processes when preprocessing_num_workers > 1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.data.convert import Conversation
from worker.data.supervised import encode_supervised
from worker.preflight.dataset_info import DataError
from worker.templates.render import (
    ChatTemplateError,
    chat_template_pairs,
    encode_multiturn,
    fix_tokenizer,
    get_template,
)

log = logging.getLogger(__name__)

ENCODING_VERSION = 2  # 2: LLaMA-Factory's templates and supervised encoding

Encoded = dict[str, list[int]]  # input_ids, attention_mask, labels
Encoder = Callable[[Conversation], Encoded | None]  # None: nothing left to learn within cutoff_len


def encoding_cutoff(spec: Any) -> int:
    """The length examples are cut to: cutoff_len, or one less under packing, as LLaMA-Factory cuts them."""
    packs = getattr(spec, "packing", None) or getattr(spec, "neat_packing", False)
    return spec.cutoff_len - 1 if packs else spec.cutoff_len


def make_encoder(spec: Any, tokenizer: Any, vocab_size: int | None = None) -> Encoder:
    """The encoder for this job; raises DataError when it cannot encode at all.

    With a `template`, the tokenizer is fixed in place as LLaMA-Factory fixes it (its eos becomes the
    template's stop word, e.g. qwen's <|im_end|>), and it is saved so with the result. `vocab_size`: the
    model's embedding rows; a template whose special tokens the model does not have is refused, since
    training on ids past the embedding would fail (LLaMA-Factory needs resize_vocab there).
    """
    cutoff_len = encoding_cutoff(spec)
    train_on_prompt = bool(getattr(spec, "train_on_prompt", False))
    mask_history = bool(getattr(spec, "mask_history", False))
    name = getattr(spec, "template", None)
    if name is None:
        require_chat_template(tokenizer)
        return SupervisedEncoder(ChatTemplatePairs(tokenizer), cutoff_len, train_on_prompt, mask_history)
    try:
        template = get_template(name, spec.default_system, spec.tool_format, spec.enable_thinking)
        fix = fix_tokenizer(template, tokenizer)
    except ValueError as exc:
        raise DataError(f"template: {exc}") from None
    for change in fix.changes:
        log.info("template %s: %s", name, change)
    special = [tokenizer.eos_token, *template.stop_words]
    beyond = [t for t in special if vocab_size is not None and tokenizer.convert_tokens_to_ids(t) >= vocab_size]
    if beyond:
        raise DataError(
            f"template: {name!r} needs the tokens {', '.join(map(repr, beyond))}, which the model's tokenizer and "
            f"embedding ({vocab_size} rows) do not have: use the template the model was trained with, or leave "
            "template unset to use the tokenizer's own chat template"
        )
    pairs = TemplatePairs(template, tokenizer, mask_history)
    return SupervisedEncoder(
        pairs, cutoff_len, train_on_prompt, mask_history, template.efficient_eos, tokenizer.eos_token_id
    )


@dataclass
class TemplatePairs:
    """(prompt ids, answer ids) per assistant turn by a LLaMA-Factory template (worker.templates.render)."""

    template: Any
    tokenizer: Any
    mask_history: bool

    def __call__(self, conv: Conversation) -> list[tuple[list[int], list[int]]]:
        # LF drops earlier turns' thoughts exactly when it masks them (its preserve_thinking defaults to off).
        return encode_multiturn(
            self.template,
            self.tokenizer,
            conv.messages,
            conv.system,
            conv.tools,
            discarding_history_cot=self.mask_history,
        )


@dataclass
class ChatTemplatePairs:
    """(prompt ids, answer ids) per assistant turn by the tokenizer's own chat template."""

    tokenizer: Any

    def __call__(self, conv: Conversation) -> list[tuple[list[int], list[int]]]:
        try:
            return chat_template_pairs(self.tokenizer, conv.messages, conv.system, conv.tools)
        except ChatTemplateError as exc:
            raise DataError(str(exc)) from None


@dataclass
class SupervisedEncoder:
    """Pairs encoded as LLaMA-Factory's supervised processor does (worker.data.supervised): its truncation per
    turn, train_on_prompt, mask_history, efficient_eos."""

    pairs: Callable[[Conversation], list[tuple[list[int], list[int]]]]
    cutoff_len: int
    train_on_prompt: bool = False
    mask_history: bool = False
    efficient_eos: bool = False
    eos_token_id: int | None = None

    def __call__(self, conv: Conversation) -> Encoded | None:
        return encode_supervised(
            self.pairs(conv),
            self.cutoff_len,
            self.train_on_prompt,
            self.mask_history,
            self.efficient_eos,
            self.eos_token_id,
        )


def require_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat_template; ftq renders conversations with the model's own template")
