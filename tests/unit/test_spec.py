"""The job spec: LLaMA-Factory's keys accepted as they are, everything else named."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from tests.helpers import REPO
from worker.spec.job import JobSpec

# LLaMA-Factory's examples/train_lora/llama3_lora_sft.yaml, as its users have it (paths made local).
LLAMA_FACTORY_YAML = """
### model
model_name_or_path: models/Meta-Llama-3-8B-Instruct
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: identity,alpaca_en_demo
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 4

### output
output_dir: saves/llama3-8b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
report_to: none

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
"""


def problems(**fields) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        JobSpec(**{"model_name_or_path": "m", "dataset": "d", **fields})
    return {".".join(str(p) for p in e["loc"]) or "spec": e["msg"] for e in info.value.errors()}


def test_a_llamafactory_training_yaml_is_accepted_as_it_is():
    spec = JobSpec(**yaml.safe_load(LLAMA_FACTORY_YAML))
    assert spec.dataset_names == ["identity", "alpaca_en_demo"]
    assert spec.effective_lora_alpha == 16 and spec.gradient_accumulation_steps == 8 and spec.gpus == 1


@pytest.mark.parametrize("path", sorted((REPO / "configs/jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_jobs_are_valid(path):
    spec = JobSpec(**yaml.safe_load(path.read_text()))
    assert spec.model_name_or_path == "configs/models/tiny-chat"


def test_unknown_keys_are_named_never_dropped():
    found = problems(lora_rnak=16, learning_rate=1e-4)
    assert list(found) == ["lora_rnak"] and "did you mean lora_rank?" in found["lora_rnak"]
    assert "README" in problems(zzz_nothing_like_it=1)["zzz_nothing_like_it"]


def test_refused_keys_say_why_beside_every_other_problem():
    found = problems(shift_attn=True, use_badam=True, lora_rnk=8, learning_rate=0, stage="dpo")
    assert set(found) == {"shift_attn", "use_badam", "lora_rnk", "learning_rate", "stage"}
    assert "S^2-Attn" in found["shift_attn"] and "BAdam" in found["use_badam"]
    assert "sft" in found["stage"]


def test_a_default_value_is_accepted_whatever_the_key():
    spec = JobSpec(
        model_name_or_path="m", dataset="d", resume_from_checkpoint=None, use_badam=False, packing=None, fsdp=None
    )
    assert spec.without_effect == {}


def test_keys_without_effect_are_kept_with_their_values_but_never_a_secret():
    spec = JobSpec(model_name_or_path="m", dataset="d", top_k=5, hf_hub_token="hf_secret", temperature=0.3)
    assert spec.without_effect == {"top_k": 5, "hf_hub_token": "(hidden)", "temperature": 0.3}
    again = JobSpec.model_validate(spec.model_dump(mode="json"))  # the worker reads the stored spec back
    assert again.without_effect == spec.without_effect
    assert "without_effect" in problems(without_effect={"lora_rank": 3})


@pytest.mark.parametrize(
    ("report_to", "honoured", "without_effect"),
    [
        ("none", "none", {}),
        (["none"], "none", {}),
        (None, "none", {}),
        ([], "none", {}),
        ("tensorboard", "tensorboard", {}),
        (["tensorboard"], "tensorboard", {}),
        (["none", "tensorboard"], "tensorboard", {}),
        ("wandb", "none", {"report_to": "wandb"}),
        ("all", "none", {"report_to": "all"}),  # ftq runs none of "all installed integrations" but its own
        (["wandb", "tensorboard", "swanlab"], "tensorboard", {"report_to": ["wandb", "swanlab"]}),
        (3, "none", {"report_to": 3}),  # not a name at all: asks for nothing ftq does, as before
    ],
)
def test_report_to_runs_tensorboard_and_keeps_every_other_integration_without_effect(
    report_to, honoured, without_effect
):
    spec = JobSpec(model_name_or_path="m", dataset="d", report_to=report_to)
    assert spec.report_to == honoured and spec.without_effect == without_effect
    again = JobSpec.model_validate(spec.model_dump(mode="json"))  # the worker reads the stored spec back
    assert again.report_to == honoured and again.without_effect == without_effect


def test_plot_loss_is_honoured():
    assert JobSpec(model_name_or_path="m", dataset="d", plot_loss=True).plot_loss is True
    assert JobSpec(model_name_or_path="m", dataset="d").plot_loss is False
    assert "plot_loss" in problems(plot_loss="sometimes")


def test_llamafactory_switch_for_gradient_checkpointing_is_stored_as_the_one_field():
    on = JobSpec(model_name_or_path="m", dataset="d", disable_gradient_checkpointing=False)
    assert on.gradient_checkpointing is True and on.disable_gradient_checkpointing is None
    off = JobSpec(model_name_or_path="m", dataset="d", disable_gradient_checkpointing=True)
    assert off.gradient_checkpointing is False
    assert "contradict" in "".join(problems(disable_gradient_checkpointing=True, gradient_checkpointing=True).values())


def test_pinned_gpus_set_the_count_and_must_agree_with_it():
    assert JobSpec(model_name_or_path="m", dataset="d", gpu_ids=[2, 3]).gpus == 2
    assert "drop gpus or match it" in "".join(problems(gpu_ids=[2, 3], gpus=1).values())
    assert "distinct" in "".join(problems(gpu_ids=[1, 1]).values())
    assert "deepspeed needs at least one GPU" in "".join(problems(deepspeed="ds.json", gpus=0).values())


def test_ranges_and_choices_name_the_field():
    found = problems(per_device_train_batch_size=0, finetuning_type="qlora", stage="dpo", gpus=-1)
    assert set(found) == {"per_device_train_batch_size", "finetuning_type", "stage", "gpus"}


def test_contradictions_are_refused():
    assert "choose one" in "".join(problems(bf16=True, fp16=True).values())
    assert "set val_size or eval_dataset" in "".join(problems(eval_strategy="steps").values())
    assert "one or the other" in "".join(problems(eval_dataset="a", val_size=0.1).values())
    assert "LoRA only" in "".join(problems(finetuning_type="full", use_dora=True).values())
    assert "bnb" in "".join(problems(quantization_bit=4, quantization_method="gptq").values())
    assert "whole count" in "".join(problems(val_size=2.5).values())


def test_names_are_safe_labels():
    assert "name" in problems(name="../../etc")
    assert JobSpec(model_name_or_path="m", dataset="d", name="cs-billing_v2.1").name == "cs-billing_v2.1"


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_steps", 2**63),  # once stored as total_steps, it overflowed SQLite's INTEGER on every tick
        ("max_steps", 2**31),
        ("seed", 2**64),  # numpy refuses it, so it failed only in the worker
        ("seed", -1),
        ("weight_decay", 1e308),  # trained to a NaN adapter reported as succeeded
        ("val_size", float("inf")),
        ("learning_rate", float("nan")),
        ("num_train_epochs", float("inf")),
        ("max_grad_norm", float("nan")),
        ("save_steps", 2**40),
        ("gpu_ids", [2**40]),
    ],
)
def test_every_number_is_bounded_where_it_enters(field, value):
    found = problems(**{field: value})
    assert any(key.startswith(field) for key in found), found


def test_a_bound_names_its_range():
    (message,) = problems(max_steps=2**63).values()
    assert "2147483647" in message
    (message,) = problems(seed=2**64).values()
    assert "4294967295" in message


def test_non_finite_numbers_are_refused_however_they_arrive():
    import json

    raw = json.loads('{"model_name_or_path": "m", "dataset": "d", "val_size": Infinity, "learning_rate": NaN}')
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(raw)
    assert {e["loc"][0] for e in info.value.errors()} == {"val_size", "learning_rate"}


def test_paths_with_nul_bytes_or_beyond_path_max_are_refused():
    assert "NUL byte" in problems(dataset_dir="data\x00/x")["dataset_dir"]
    assert "model_name_or_path" in problems(model_name_or_path="m" * 5000)
    assert "deepspeed" in problems(deepspeed="ds\x00.json")


def test_the_largest_values_a_real_run_uses_are_accepted():
    spec = JobSpec(model_name_or_path="m", dataset="d", max_steps=2**31 - 1, seed=2**32 - 1, ddp_timeout=180_000_000)
    assert spec.seed == 2**32 - 1
