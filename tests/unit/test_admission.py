"""The "it would fit with ..." suggestions, on real models' config.json and GPUs on paper: no daemon, no files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scheduler.gpus.fake import FakeProbe
from server.services.admission import suggestions
from server.services.paths import SpecFiles
from tests.helpers import load_model_config
from worker.spec.job import JobSpec
from worker.spec.units import GIB

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "model_configs"
QWEN = load_model_config(FIXTURES / "qwen2.5-0.5b.json")


def suggested(gpus: str, config: dict[str, Any] = QWEN, **fields: Any) -> list[str]:
    spec = JobSpec(model_name_or_path="m", dataset="d", bf16=True, **fields)
    return suggestions(spec, FakeProbe(gpus).snapshot(), GIB, files=SpecFiles(config, None))


def test_the_fused_loss_comes_first_when_the_spec_turned_it_off():
    # 8 x 1024 LoRA, padding-free: 34.6 GiB with the whole logits, 19.4 GiB with one chunk of them.
    found = suggested("1x24GiB", per_device_train_batch_size=8, cutoff_len=1024, fused_cross_entropy=False)
    assert found[0] == "fused_cross_entropy: true (about 19.4 GiB per GPU)", found
    assert not any("padding_free" in line for line in found)  # on already


def test_padding_free_is_suggested_when_the_padding_mask_is_what_does_not_fit():
    # 4 x 4096 padded: 38.6 GiB, 3.1 GiB of it the attention masks; flattened: 35.5 GiB.
    found = suggested("1x37GiB", per_device_train_batch_size=4, cutoff_len=4096, padding_free=False)
    assert found[0] == "padding_free: true (about 35.5 GiB per GPU)", found
    assert "gradient_checkpointing: true" in found[1]


def test_both_switches_together_when_neither_alone_is_enough():
    # 4 x 4096: 38.6 GiB fused but padded, 67 GiB flattened with the whole logits, 35.5 GiB with both.
    found = suggested(
        "1x37GiB", per_device_train_batch_size=4, cutoff_len=4096, padding_free=False, fused_cross_entropy=False
    )
    assert found[0] == "fused_cross_entropy: true, padding_free: true (about 35.5 GiB per GPU)", found


def test_a_model_the_fused_loss_cannot_serve_is_not_told_to_turn_it_on():
    capped = {**QWEN, "final_logit_softcapping": 30.0}
    found = suggested("1x24GiB", capped, per_device_train_batch_size=8, cutoff_len=1024, fused_cross_entropy=False)
    assert found and not any("fused_cross_entropy" in line for line in found)


def test_the_other_suggestions_are_counted_in_the_modes_the_job_runs_in():
    # With both switches on (the default), halving the micro-batch is counted with one chunk of logits.
    found = suggested("1x12GiB", per_device_train_batch_size=8, cutoff_len=1024, gradient_accumulation_steps=2)
    assert "per_device_train_batch_size: 4, gradient_accumulation_steps: 4" in " | ".join(found), found
    assert not any("fused_cross_entropy" in line or "padding_free" in line for line in found)
