"""The method keys turned into transformers' training arguments, refused at submit, and compared on resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from worker.run.checkpoints import Checkpoint, Expected, TrainingShape, check_checkpoint, write_shape
from worker.run.trainer_args import merge_arguments, method_arguments
from worker.run.validate import read_and_validate
from worker.spec.job import JobSpec
from worker.spec.methods import (
    ALL_LINEAR_BUT_OUTPUT,
    attn_implementation,
    describe_method,
    effective_optim,
    expected_adapter,
    low_rank_optimizer,
)

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "models" / "tiny-chat"
DATA = REPO / "configs" / "data"
FIELDS = {"activation_checkpointing_kwargs", "gradient_checkpointing_kwargs"}


def spec(**fields: Any) -> JobSpec:
    return JobSpec(model_name_or_path="m", dataset="d", **fields)


def refused(**fields: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        JobSpec(model_name_or_path="m", dataset="d", **fields)
    return str(caught.value)


# ---- attention, GaLore and APOLLO as transformers takes them ----


def test_flash_attn_maps_to_transformers_attn_implementation() -> None:
    assert [attn_implementation(v) for v in ("auto", "disabled", "sdpa", "fa2", "fa3")] == [
        None, "eager", "sdpa", "flash_attention_2", "flash_attention_3"
    ]  # fmt: skip


def test_galore_becomes_transformers_optim_with_its_target_and_args() -> None:
    job = spec(finetuning_type="full", use_galore=True, galore_rank=128, galore_update_interval=100, galore_scale=2.0,
               galore_proj_type="left")  # fmt: skip
    assert low_rank_optimizer(job) == {
        "optim": "galore_adamw",
        "optim_target_modules": ALL_LINEAR_BUT_OUTPUT,
        "optim_args": "rank=128,update_proj_gap=100,scale=2.0,proj_type=left",
    }
    layerwise = spec(finetuning_type="full", use_galore=True, galore_layerwise=True, galore_target="q_proj,v_proj")
    assert low_rank_optimizer(layerwise)["optim"] == "galore_adamw_layerwise"
    assert low_rank_optimizer(layerwise)["optim_target_modules"] == ["q_proj", "v_proj"]
    assert effective_optim(spec(finetuning_type="full", use_galore=True, optim="adamw_8bit")) == "galore_adamw_8bit"
    assert effective_optim(spec(finetuning_type="full", use_galore=True, optim="adafactor")) == "galore_adafactor"
    assert effective_optim(spec(finetuning_type="full", use_galore=True, optim="galore_adamw_layerwise")) == (
        "galore_adamw_layerwise"
    )
    assert low_rank_optimizer(spec()) == {}


def test_the_all_target_regex_takes_every_linear_layer_but_the_output_one() -> None:
    import re

    names = ["model.layers.0.self_attn.q_proj", "model.layers.3.mlp.down_proj", "lm_head", "transformer.output_layer"]
    assert [bool(re.fullmatch(ALL_LINEAR_BUT_OUTPUT, name)) for name in names] == [True, True, False, False]


def test_apollo_becomes_transformers_optim_with_its_args() -> None:
    job = spec(finetuning_type="freeze", use_apollo=True, apollo_rank=64, apollo_proj="svd", apollo_scale_type="tensor")
    assert low_rank_optimizer(job) == {
        "optim": "apollo_adamw",
        "optim_target_modules": ALL_LINEAR_BUT_OUTPUT,
        "optim_args": "rank=64,proj=svd,scale_type=tensor,update_proj_gap=200,scale=32.0,proj_type=std",
    }


def test_galore_reaches_training_arguments(tmp_path: Path) -> None:
    from worker.run.arguments import training_arguments

    job = JobSpec(model_name_or_path=str(TINY), dataset="d", finetuning_type="full", use_galore=True, gpus=0,
                  gradient_checkpointing=True, use_reentrant_gc=False, disable_shuffling=True,
                  adam_beta2=0.95, tf32=True, ddp_find_unused_parameters=True)  # fmt: skip
    args = training_arguments(job, tmp_path, cuda=False)
    assert (args.optim, args.optim_target_modules) == ("galore_adamw", ALL_LINEAR_BUT_OUTPUT)
    assert args.optim_args == "rank=16,update_proj_gap=200,scale=2.0,proj_type=std"
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert args.train_sampling_strategy == "sequential" and args.adam_beta2 == 0.95
    assert args.tf32 is None  # a GPU mode: dropped without CUDA
    assert args.ddp_find_unused_parameters is True  # the spec's value wins over ftq's
    assert args.report_to == []  # ftq streams its own metrics
    assert args.remove_unused_columns is False


# ---- the passed-through keys and ftq's own ----


def test_method_arguments_use_reentrant_gc_unless_the_spec_gives_checkpointing_kwargs() -> None:
    assert method_arguments(spec(gradient_checkpointing=True), False, FIELDS) == {
        "activation_checkpointing_kwargs": {"use_reentrant": True}
    }
    own = spec(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False, "x": 1})
    assert method_arguments(own, False, FIELDS) == {"activation_checkpointing_kwargs": {"use_reentrant": False, "x": 1}}
    assert method_arguments(spec(), False, FIELDS) == {}  # no checkpointing: nothing to say
    old = method_arguments(spec(gradient_checkpointing=True), False, {"gradient_checkpointing_kwargs"})
    assert old == {"gradient_checkpointing_kwargs": {"use_reentrant": True}}


def test_method_arguments_liger_tf32_and_sampling() -> None:
    assert method_arguments(spec(enable_liger_kernel=True, tf32=True), True, FIELDS) == {
        "use_liger_kernel": True, "tf32": True
    }  # fmt: skip
    assert method_arguments(spec(tf32=True), False, FIELDS) == {}
    assert method_arguments(spec(disable_shuffling=True), False, FIELDS) == {"train_sampling_strategy": "sequential"}


def test_merge_lets_the_spec_win_only_where_ftq_says_it_may() -> None:
    ftq = {"save_strategy": "steps", "report_to": "none", "ddp_find_unused_parameters": None}
    assert merge_arguments(ftq, {"save_strategy": "epoch"})["save_strategy"] == "epoch"
    with pytest.raises(AssertionError, match="ftq sets report_to itself"):
        merge_arguments(ftq, {"report_to": "wandb"})


# ---- combinations refused at submit ----


def test_oft_rank_and_block_size_both_set_or_both_zero_are_refused_naming_the_keys() -> None:
    assert "oft_rank and oft_block_size are both set (8 and 32)" in refused(finetuning_type="oft", oft_rank=8)
    assert "oft_rank and oft_block_size are both 0" in refused(finetuning_type="oft", oft_block_size=0)
    assert spec(finetuning_type="oft", oft_rank=8, oft_block_size=0).oft_rank == 8


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        (dict(use_galore=True, optim="sgd"), "use_galore runs with optim adamw_torch, adamw_torch_fused, adamw_8bit"),
        (dict(use_apollo=True, optim="adafactor"),
         "use_apollo runs with optim adamw_torch, adamw_torch_fused (as in LLaMA-Factory), not adafactor"),
        (dict(use_galore=True, galore_layerwise=True, gradient_accumulation_steps=4),
         "galore_layerwise steps each layer as its gradient arrives, so it cannot accumulate gradients"),
        (dict(use_apollo=True, apollo_layerwise=True, gpus=2), "apollo_layerwise does not run under DDP"),
        (dict(use_galore=True, optim_args="rank=4"), "use_galore sets optim_target_modules and optim_args"),
        (dict(use_apollo=True, apollo_scale_front=True), "apollo_scale_front: transformers' APOLLO integration"),
        (dict(disable_shuffling=True, train_sampling_strategy="group_by_length"),
         "disable_shuffling asks for sequential sampling but train_sampling_strategy is 'group_by_length'"),
        (dict(freeze_trainable_layers=0), "freeze_trainable_layers is 0 and freeze_extra_modules is unset"),
        (dict(additional_target="embed_tokens"), "additional_target applies to LoRA and OFT"),
    ],
)  # fmt: skip
def test_combinations_transformers_refuses_are_refused_at_submit(fields: dict, why: str) -> None:
    assert why in refused(finetuning_type="freeze", **fields)


def test_loraplus_with_an_optimizer_without_param_groups_is_refused() -> None:
    assert "loraplus_lr_ratio builds its own parameter groups" in refused(loraplus_lr_ratio=16, optim="lomo")


# ---- resuming: the method a checkpoint was trained with ----


def checkpoint(directory: Path, step: int, adapter: dict | None = None, method: str | None = None) -> Checkpoint:
    path = directory / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if adapter is not None:
        (path / "adapter_config.json").write_text(json.dumps(adapter))
        save_file({"w": torch.zeros(2, 2)}, str(path / "adapter_model.safetensors"))
    else:
        save_file({"w": torch.zeros(2, 2)}, str(path / "model.safetensors"))
    torch.save({"state": {}, "param_groups": []}, path / "optimizer.pt")
    torch.save({}, path / "scheduler.pt")
    write_shape(path, TrainingShape(1, 1, 1, method=method))
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return Checkpoint(path, step)


def expected(job: JobSpec, trained_on: dict | None = None) -> Expected:
    rank, adapter = expected_adapter(job, trained_on)
    return Expected(job.finetuning_type, rank, False, 1, adapter, describe_method(job))


def test_an_oft_checkpoint_resumes_an_oft_job_and_no_lora_one(tmp_path: Path) -> None:
    oft = spec(finetuning_type="oft")
    saved = checkpoint(tmp_path, 2, {"peft_type": "OFT", "r": 0, "oft_block_size": 32}, describe_method(oft))
    assert check_checkpoint(saved, expected(oft)) is None
    assert check_checkpoint(saved, Expected("lora", 8, False, 1)) == (
        "it holds an OFT adapter, but this job trains a LoRA adapter"
    )
    other = spec(finetuning_type="oft", oft_block_size=16)
    assert check_checkpoint(saved, Expected("oft", 8, False, 1, expected_adapter(other, None)[1])) == (
        "its adapter has oft_block_size 32, but this job's is 16"
    )
    assert check_checkpoint(saved, Expected("full", 8, False, 1)) == (
        "it holds an OFT adapter, but this job fine-tunes the full model"
    )


def test_a_freeze_checkpoint_resumes_the_same_freeze_job_only(tmp_path: Path) -> None:
    freeze = spec(finetuning_type="freeze", freeze_trainable_layers=1)
    saved = checkpoint(tmp_path, 2, None, describe_method(freeze))
    assert check_checkpoint(saved, expected(freeze)) is None
    assert check_checkpoint(saved, expected(spec(finetuning_type="full"))) == (
        "it was trained as 'freeze layers=1 modules=all', but this job trains 'full'"
    )
    assert "this job trains 'freeze layers=2 modules=all'" in check_checkpoint(
        saved, expected(spec(finetuning_type="freeze"))
    )
    assert check_checkpoint(saved, Expected("full", 8, False, 1)) is None  # no method to compare: the old rule


def test_a_dora_or_qlora_checkpoint_is_not_resumed_as_plain_lora(tmp_path: Path) -> None:
    dora = spec(use_dora=True)
    saved = checkpoint(tmp_path, 2, {"peft_type": "LORA", "r": 8, "use_dora": True}, describe_method(dora))
    assert check_checkpoint(saved, expected(dora)) is None
    assert check_checkpoint(saved, Expected("lora", 8, False, 1, expected_adapter(spec(), None)[1])) == (
        "its adapter has use_dora True, but this job's is False"
    )
    qlora = checkpoint(tmp_path / "q", 2, {"peft_type": "LORA", "r": 8}, describe_method(spec(quantization_bit=4)))
    assert check_checkpoint(qlora, expected(spec())) == (
        "it was trained as 'lora r=8 target=all 4bit', but this job trains 'lora r=8 target=all'"
    )


def test_training_on_an_existing_adapter_expects_that_adapters_rank(tmp_path: Path) -> None:
    job = spec(adapter_name_or_path="a", lora_rank=8)
    assert expected_adapter(job, {"r": 4, "use_dora": False}) == (4, (("use_dora", False),))
    assert expected_adapter(spec(adapter_name_or_path="a", create_new_adapter=True), {"r": 4}) == (
        8, (("use_dora", False),)
    )  # fmt: skip


# ---- the worker refuses what this machine cannot run, before loading ----


def run_dir(tmp_path: Path, **fields: Any) -> Path:
    spec_fields = {"model_name_or_path": str(TINY), "dataset": "cs_billing", "dataset_dir": str(DATA), **fields}
    (tmp_path / "spec.json").write_text(json.dumps(spec_fields))
    return tmp_path


@pytest.mark.skipif(not (TINY / "config.json").is_file(), reason="the shipped tiny model is missing")
def test_the_worker_refuses_qlora_and_flash_attention_without_cuda(tmp_path: Path) -> None:
    directory = run_dir(tmp_path, quantization_bit=4, flash_attn="fa2", gpus=1)
    _, problems = read_and_validate(directory, env={}, cuda=False)
    assert any(p.startswith("quantization_bit: 4-bit QLoRA") and "no CUDA device is visible" in p for p in problems)
    assert any(p.startswith("flash_attn: FlashAttention-2") for p in problems)
    _, cpu_slot = read_and_validate(run_dir(tmp_path, quantization_bit=8, gpus=0), env={}, cuda=False)
    assert [p for p in cpu_slot if "quantization_bit" in p][0].endswith("this job asks for a CPU slot (gpus: 0)")
    _, fine = read_and_validate(run_dir(tmp_path, gpus=0), env={}, cuda=False)
    assert fine == []


@pytest.mark.skipif(not (TINY / "config.json").is_file(), reason="the shipped tiny model is missing")
def test_the_worker_checks_each_adapter_directory_before_loading(tmp_path: Path) -> None:
    (tmp_path / "not-an-adapter").mkdir()
    directory = run_dir(tmp_path, adapter_name_or_path=f"{tmp_path / 'not-an-adapter'},{tmp_path / 'gone'}")
    _, problems = read_and_validate(directory, env={}, cuda=False)
    adapters = [p for p in problems if p.startswith("adapter_name_or_path")]
    assert len(adapters) == 2 and "has no adapter_config.json: it is not a peft adapter" in adapters[0]
