"""Synthetic customer-service chats whose token lengths follow a lognormal, for bench.throughput.

Short chats of uneven length are where padding costs most, so the bench's data
is drawn to look like them: lengths (as the tokenizer's chat template counts
them) lognormal with median ~178 and mean ~216 tokens, capped at cutoff_len.
The words are the tiny tokenizer's single-token words that the shipped
customer-service chats use, so every word is one token and a chat's length
can be set to the token. Pure but for `write_dataset`'s files.
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "configs/data/customer_service.jsonl"
DATASET = "cs_lengths"
SYSTEM = "You are Brightmart's support assistant. Be brief, friendly and exact."
USER_SHARE = 0.35  # of a chat's words; the assistant's answer (the trained tokens) gets the rest


def lognormal_sigma(median: float, mean: float) -> float:
    """σ of the lognormal with this median and mean: mean = median·exp(σ²/2)."""
    if mean <= median:
        raise ValueError(f"a lognormal's mean ({mean}) lies above its median ({median})")
    return math.sqrt(2 * math.log(mean / median))


def draw_lengths(n: int, median: float, mean: float, cap: int, floor: int = 40, seed: int = 0) -> list[int]:
    """n token lengths from the lognormal with this median and mean (before the cap), clipped to [floor, cap].

    The n quantiles at (i + ½)/n, in a shuffled order, rather than n random
    draws: the realized median and mean then match at any n. The floor lies
    above a chat's fixed tokens (system prompt and template, ~35).
    """
    mu, sigma = math.log(median), lognormal_sigma(median, mean)
    normal = statistics.NormalDist()
    lengths = [min(cap, max(floor, round(math.exp(mu + sigma * normal.inv_cdf((i + 0.5) / n))))) for i in range(n)]
    random.Random(seed).shuffle(lengths)
    return lengths


def describe(lengths: Sequence[int]) -> str:
    """e.g. 'median 178, mean 215.9, max 1024 tokens (n=1280)'."""
    return (
        f"median {statistics.median(lengths):.0f}, mean {statistics.fmean(lengths):.1f}, "
        f"max {max(lengths)} tokens (n={len(lengths)})"
    )


def vocabulary_words(tokenizer: Any, corpus: Path = CORPUS) -> list[str]:
    """The words that are one token of the tokenizer (with their leading space) and occur in the corpus."""
    seen = set(re.findall(r"[a-z]+", corpus.read_text(encoding="utf-8").lower()))
    single = (token[1:] for token in tokenizer.get_vocab() if token.startswith("Ġ"))  # Ġ: byte-level BPE's space
    return sorted(w for w in single if len(w) > 1 and w.isalpha() and w.islower() and w in seen)


def chat(words: Sequence[str]) -> list[dict[str, str]]:
    """A system prompt, a customer's question and the assistant's answer made of these words.

    Each turn opens with a fixed word, so that every drawn word follows a space and is one token.
    """
    cut = max(1, round(len(words) * USER_SHARE))
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": " ".join(["Hello,", *words[:cut]])},
        {"role": "assistant", "content": " ".join(["Sure,", *words[cut:]])},
    ]


def token_length(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """The chat's length as the worker sees it without a `template`: by the tokenizer's chat template."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    # verbose=False: a chat tried past the tokenizer's model_max_length while fitting is no problem to warn of
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def fit_chat(tokenizer: Any, pool: Sequence[str], target: int) -> tuple[list[dict[str, str]], int]:
    """The chat from a prefix of `pool` whose length comes closest to `target` tokens; with its length.

    Nearly every word is one token, so the first guess is within a token or two;
    a few corrections absorb the template's tokens and the odd split word.
    """
    n = max(2, target - token_length(tokenizer, chat(pool[:2])) + 2)
    messages, length = chat(pool[:n]), 0
    for _ in range(4):
        messages = chat(pool[:n])
        length = token_length(tokenizer, messages)
        if length == target or (n == 2 and length > target):
            break
        n = max(2, min(len(pool), n + target - length))
    return messages, length


def write_dataset(where: Path, tokenizer: Any, targets: Sequence[int], seed: int = 0) -> list[int]:
    """DATASET in `where` (dataset_info.json and a sharegpt JSONL file), a chat per target; the realized lengths."""
    words = vocabulary_words(tokenizer)
    rng = random.Random(seed)
    where.mkdir(parents=True, exist_ok=True)
    lengths = []
    with open(where / f"{DATASET}.jsonl", "w", encoding="utf-8") as f:
        for target in targets:
            pool = rng.choices(words, k=target + 16)
            messages, length = fit_chat(tokenizer, pool, target)
            f.write(json.dumps({"messages": messages}) + "\n")
            lengths.append(length)
    (where / "dataset_info.json").write_text(json.dumps({DATASET: dataset_entry()}, indent=2) + "\n")
    return lengths


def dataset_entry() -> dict[str, Any]:
    """The dataset_info.json entry, in the form of the shipped customer_service set."""
    return {
        "file_name": f"{DATASET}.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "system_tag": "system",
        },
    }
