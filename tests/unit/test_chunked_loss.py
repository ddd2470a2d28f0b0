"""The chunked cross-entropy computes transformers' loss and gradients
(worker.model.chunked_loss, worker.spec.loss_chunks)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from worker.data.batching import FlatCollator
from worker.data.supervised import IGNORE_INDEX
from worker.model.chunked_loss import ChunkedLoss, causal_lm_loss
from worker.spec.loss_chunks import CHUNKED, FULL_LOGITS, LIGER, chunk_tokens, loss_blockers, loss_kernel


def reference_loss(logits: torch.Tensor, labels: torch.Tensor, num_items: int | None) -> torch.Tensor:
    """transformers' ForCausalLMLoss, written out."""
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1)
    reduction = "sum" if num_items is not None else "mean"
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets, ignore_index=IGNORE_INDEX,
                           reduction=reduction)  # fmt: skip
    return loss / num_items if num_items is not None else loss


@pytest.mark.parametrize("chunk", [1, 3, 1000])
@pytest.mark.parametrize("num_items", [None, 11])
def test_loss_and_gradients_equal_the_full_logits_path(chunk: int, num_items: int | None):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(2, 7, 8, requires_grad=True)
    labels = torch.randint(0, 50, (2, 7))
    labels[0, :3] = IGNORE_INDEX  # a prompt

    mine = causal_lm_loss(hidden, labels, head, num_items, chunk)
    mine.backward()
    grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    theirs = reference_loss(head(hidden), labels, num_items)
    theirs.backward()

    torch.testing.assert_close(mine, theirs)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], head.weight.grad)


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        use_cache=False,
    )  # fmt: skip  (as worker.model.load sets it for padding-free rows)
    return LlamaForCausalLM(config).train()


def test_through_the_model_it_equals_the_model_s_own_loss_on_a_padding_free_row():
    model = tiny_llama()
    g = torch.Generator().manual_seed(3)
    batch = [{"input_ids": (ids := torch.randint(1, 96, (n,), generator=g).tolist()), "labels": ids} for n in (5, 9)]
    inputs = FlatCollator()(batch)
    num_items = torch.tensor(12)
    chunked = ChunkedLoss(model, vocab_size=96)
    chunked.chunk = 4  # several chunks

    mine = chunked.compute(model, inputs, num_items)
    mine.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    theirs = model(**inputs, num_items_in_batch=num_items).loss
    theirs.backward()

    torch.testing.assert_close(mine, theirs)
    for a, b in zip(grads, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert chunked.matches_model(model, batch[0]["input_ids"])
    assert model.training  # the check leaves the mode as it was


def test_a_model_that_changes_its_logits_after_the_output_layer_is_caught():
    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                          final_logit_softcapping=0.5)  # fmt: skip
    model = Gemma2ForCausalLM(config)

    assert not ChunkedLoss(model, 96).matches_model(model, [1, 2, 3, 4])
    assert loss_blockers(config.to_dict()) == ["final_logit_softcapping"]


def test_the_chunk_bounds_the_logits_alive():
    assert chunk_tokens(151_936) == 2**27 // 151_936  # ~880 tokens of Qwen2.5's vocabulary: 512 MiB of fp32
    assert chunk_tokens(10**9) == 64


def test_which_loss_each_job_gets():
    spec = SimpleNamespace(fused_cross_entropy=True, enable_liger_kernel=False, use_liger_kernel=False,
                           moe_aux_loss_coef=None)  # fmt: skip

    def kernel(config: dict | None = None, **keys: object) -> str:
        on = dict(cuda=False, zero_stage=0, liger_installed=False)
        on.update({k: v for k, v in keys.items() if k in on})
        job = SimpleNamespace(**{**vars(spec), **{k: v for k, v in keys.items() if k not in on}})
        return loss_kernel(job, config or {}, **on)  # type: ignore[arg-type]

    assert kernel() == CHUNKED
    assert kernel(cuda=True, liger_installed=True) == LIGER
    assert kernel(cuda=True) == CHUNKED
    assert kernel(fused_cross_entropy=False) == FULL_LOGITS
    assert kernel(enable_liger_kernel=True, fused_cross_entropy=False) == LIGER  # asked outright
    assert kernel(zero_stage=3) == FULL_LOGITS
    assert kernel({"logit_scale": 0.0625}) == FULL_LOGITS  # Cohere
    assert kernel({"router_aux_loss_coef": 0.001}) == CHUNKED  # the aux loss stays off ...
    assert kernel({"router_aux_loss_coef": 0.001}, moe_aux_loss_coef=0.001) == FULL_LOGITS  # ... unless asked
