"""Attention inside each example of a padding-free row (worker.model.packed_attention)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from worker.data.batching import FlatCollator
from worker.data.supervised import IGNORE_INDEX
from worker.model.packed_attention import NAME, _window_mask, boundaries, packed_implementation, register


def tiny_llama(attention: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    config._attn_implementation = attention
    return LlamaForCausalLM(config).train()


def examples(*lengths: int, seed: int = 1) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(1, 64, (n,), generator=g).tolist() for n in lengths]
    return [{"input_ids": ids, "labels": [IGNORE_INDEX, *ids[1:]]} for ids in rows]


def flat_logits(model: LlamaForCausalLM, batch: list[dict[str, list[int]]]) -> torch.Tensor:
    inputs = FlatCollator()(batch)
    inputs.pop("labels")
    return model(**inputs, use_cache=False).logits[0]


@pytest.fixture(scope="module")
def packed() -> LlamaForCausalLM:
    return tiny_llama(register())


def test_each_example_of_a_row_gets_the_logits_it_gets_alone(packed: LlamaForCausalLM):
    batch = examples(5, 9, 3)
    flat = flat_logits(packed, batch)
    start = 0
    for example in batch:
        alone = packed(input_ids=torch.tensor([example["input_ids"]]), use_cache=False).logits[0]
        n = len(example["input_ids"])
        torch.testing.assert_close(flat[start : start + n], alone, rtol=1e-5, atol=1e-5)
        start += n


def test_attention_never_crosses_from_one_example_into_the_next(packed: LlamaForCausalLM):
    first, second = examples(6, 7)
    changed = {**first, "input_ids": [(t % 63) + 1 for t in first["input_ids"]]}

    before = flat_logits(packed, [first, second])[6:]
    after = flat_logits(packed, [changed, second])[6:]

    torch.testing.assert_close(before, after)  # the second example cannot see what changed in the first


def test_a_row_attended_as_one_sequence_would_fail_the_same_check():
    # What the check above guards against: a plain causal pass over the row, as a 2-D mask of ones gives.
    model = tiny_llama("sdpa")
    first, second = examples(6, 7)
    changed = {**first, "input_ids": [(t % 63) + 1 for t in first["input_ids"]]}

    def row(batch: list[dict[str, list[int]]]) -> torch.Tensor:
        ids = torch.tensor([[t for ex in batch for t in ex["input_ids"]]])
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[0, 6:]

    assert not torch.allclose(row([first, second]), row([changed, second]))


def test_transformers_own_packed_rows_cross_examples_while_a_cache_is_on():
    # Why worker.model.load turns use_cache off for padding-free rows: with the (default) cache, transformers does
    # not look for the examples in the positions, and its SDPA path attends across the row.
    model = tiny_llama("sdpa")
    inputs = FlatCollator()(examples(6, 7))
    inputs.pop("labels")
    alone = model(input_ids=inputs["input_ids"][:, 6:], use_cache=False).logits[0]

    without_cache = model(**inputs, use_cache=False).logits[0, 6:]
    with_cache = model(**inputs, use_cache=True).logits[0, 6:]

    torch.testing.assert_close(without_cache, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(with_cache, alone, atol=1e-3)


def test_gradients_match_the_examples_run_alone(packed: LlamaForCausalLM):
    batch = examples(4, 8)
    packed.zero_grad()
    flat_logits(packed, batch).sum().backward()
    flat = [p.grad.clone() for p in packed.parameters()]
    packed.zero_grad()
    for example in batch:
        packed(input_ids=torch.tensor([example["input_ids"]]), use_cache=False).logits[0].sum().backward()
    for mine, alone in zip(flat, (p.grad for p in packed.parameters()), strict=True):
        torch.testing.assert_close(mine, alone, rtol=1e-4, atol=1e-5)


def test_boundaries_come_from_cu_seq_lens_else_the_positions():
    assert boundaries(torch.tensor([0, 3, 5]), None, 5) == [0, 3, 5]
    assert boundaries(None, torch.tensor([[0, 1, 2, 0, 1]]), 5) == [0, 3, 5]
    assert boundaries(None, None, 4) == [0, 4]
    with pytest.raises(ValueError, match="boundaries"):
        boundaries(torch.tensor([0, 3, 6]), None, 5)


def test_a_sliding_window_mask_is_causal_within_the_window():
    mask = _window_mask(4, 2, torch.device("cpu"))[0, 0].int().tolist()
    assert mask == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]


def test_which_implementation_padding_free_rows_get():
    assert packed_implementation(None, {}) == NAME  # flash_attn: auto
    assert packed_implementation("sdpa", {}) == NAME
    assert packed_implementation("eager", {}) == "eager"  # asked by name: transformers' own block mask
    assert packed_implementation("flash_attention_2", {}) == "flash_attention_2"  # varlen from cu_seq_lens
    assert packed_implementation(None, {"attn_logit_softcapping": 50.0}) is None  # Gemma 2: not computed here
