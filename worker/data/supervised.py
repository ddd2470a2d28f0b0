"""One supervised example from (prompt ids, response ids) pairs, truncated and labelled as LLaMA-Factory does.

A port of SupervisedDatasetProcessor._encode_data_example (data/processor/supervised.py
at v0.9.5) and infer_seqlen (processor_utils.py), without images and without the
tokenizer: the pairs come from worker.templates.render and the eos id is passed in.
"""

from __future__ import annotations

from collections.abc import Sequence

IGNORE_INDEX = -100  # the label the loss skips; worker.data.pipeline takes it from here


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """How much of a prompt and its response fit in cutoff_len: a short side is kept whole, else both shrink."""
    if target_len * 2 < cutoff_len:  # the response is short: cut the prompt
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:  # the prompt is short: cut the response
        max_target_len = cutoff_len - source_len
    else:  # both are long: cut both in proportion
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    new_source_len = min(max(cutoff_len - new_target_len, 0), source_len)
    return new_source_len, new_target_len


def encode_supervised(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    cutoff_len: int,
    train_on_prompt: bool = False,
    mask_history: bool = False,
    efficient_eos: bool = False,
    eos_token_id: int | None = None,
) -> dict[str, list[int]] | None:
    """input_ids / attention_mask / labels for one conversation; None when no label is left to learn from.

    Turns are cut one by one against what is left of cutoff_len. mask_history fits the last turn first
    (LF reverses the pairs) and trains on its response only. An efficient_eos template writes no eos
    after its answers: the first token of the next prompt is labelled eos instead (the model learns to
    stop where the answer stopped), and one eos closes the example. LF refuses train_on_prompt with
    efficient_eos or with mask_history, and so does this.
    """
    if train_on_prompt and efficient_eos:
        raise ValueError("train_on_prompt does not work with an efficient_eos template (LF refuses it too)")
    if train_on_prompt and mask_history:
        raise ValueError("mask_history is incompatible with train_on_prompt (LF refuses it too)")
    if efficient_eos and eos_token_id is None:
        raise ValueError("an efficient_eos template needs eos_token_id")
    input_ids: list[int] = []
    labels: list[int] = []
    total_length = 1 if efficient_eos else 0  # room for the closing eos
    ordered = list(pairs)[::-1] if mask_history else list(pairs)
    for turn, (source, target) in enumerate(ordered):
        if total_length >= cutoff_len:
            break
        source_len, target_len = infer_seqlen(len(source), len(target), cutoff_len - total_length)
        source_ids, target_ids = list(source[:source_len]), list(target[:target_len])
        total_length += source_len + target_len
        if train_on_prompt:
            source_label = source_ids
        elif efficient_eos and turn != 0:
            # LF writes [eos] + [IGNORE] * (source_len - 1), one label too many for an empty prompt; cut to fit
            source_label = ([eos_token_id] + [IGNORE_INDEX] * (source_len - 1))[:source_len]
        else:
            source_label = [IGNORE_INDEX] * source_len
        target_label = [IGNORE_INDEX] * target_len if mask_history and turn != 0 else target_ids
        if mask_history:  # the pairs run backwards: put each earlier turn in front
            input_ids = source_ids + target_ids + input_ids
            labels = source_label + target_label + labels
        else:
            input_ids += source_ids + target_ids
            labels += source_label + target_label
    if efficient_eos:
        input_ids.append(eos_token_id)
        labels.append(eos_token_id)
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}
