"""needs() and missing(): what a job asks of the machine, and the sentence that refuses it (no packages imported)."""

from __future__ import annotations

from typing import Any

import pytest

from worker.preflight.requirements import NO_CUDA, NO_GPU_SLOT, Need, missing, needs
from worker.spec.job import JobSpec

BNB = ("bitsandbytes", "pip install 'ftq[gpu]'", True)


def spec(**fields: Any) -> JobSpec:
    return JobSpec(model_name_or_path="m", dataset="d", **fields)


def nothing(name: str) -> None:
    """A machine with no optional package at all."""
    return None


def everything(name: str) -> object:
    return object()


def asked(job: JobSpec, config: dict | None = None) -> list[tuple[str, str | None, str | None, bool]]:
    return [(n.field, n.package, n.pip, n.gpu_only) for n in needs(job, config)]


def test_a_plain_lora_job_needs_nothing() -> None:
    assert needs(spec(), {"model_type": "llama"}) == [] and needs(spec(finetuning_type="full"), None) == []


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (dict(quantization_bit=4), [("quantization_bit", *BNB)]),
        (dict(quantization_bit=8), [("quantization_bit", *BNB)]),
        (dict(flash_attn="fa2"), [("flash_attn", "flash_attn", "pip install flash-attn --no-build-isolation", True)]),
        (dict(flash_attn="fa3"),
         [("flash_attn", "flash_attn_interface", "build it from flash-attention's hopper/ directory", True)]),
        (dict(flash_attn="sdpa"), []),
        (dict(enable_liger_kernel=True), [("enable_liger_kernel", "liger_kernel", "pip install 'ftq[gpu]'", True)]),
        (dict(use_liger_kernel=True), [("use_liger_kernel", "liger_kernel", "pip install 'ftq[gpu]'", True)]),
        (dict(finetuning_type="full", use_galore=True),
         [("use_galore", "galore_torch", "pip install galore-torch", False)]),  # said once
        (dict(finetuning_type="full", use_galore=True, optim="adamw_8bit"),
         [("use_galore", "galore_torch", "pip install galore-torch", False), ("optim", *BNB)]),
        (dict(finetuning_type="full", use_apollo=True),
         [("use_apollo", "apollo_torch", "pip install apollo-torch", False)]),
        (dict(optim="adamw_bnb_8bit"), [("optim", *BNB)]),
        (dict(optim="adamw_8bit"), [("optim", *BNB)]),
        (dict(optim="paged_adamw_32bit"), [("optim", *BNB)]),
        (dict(optim="lion_8bit"), [("optim", *BNB)]),
        (dict(optim="paged_lion_32bit"), [("optim", *BNB)]),
        (dict(optim="ademamix"), [("optim", *BNB)]),
        (dict(optim="rmsprop_bnb_32bit"), [("optim", *BNB)]),
        (dict(optim="galore_adafactor"), [("optim", "galore_torch", "pip install galore-torch", False)]),
        (dict(optim="apollo_adamw_layerwise"), [("optim", "apollo_torch", "pip install apollo-torch", False)]),
        (dict(optim="lomo"), [("optim", "lomo_optim", "pip install lomo-optim", False)]),
        (dict(optim="adalomo"), [("optim", "lomo_optim", "pip install lomo-optim", False)]),
        (dict(optim="grokadamw"), [("optim", "grokadamw", "pip install grokadamw", False)]),
        (dict(optim="schedule_free_radam"), [("optim", "schedulefree", "pip install schedulefree", False)]),
        (dict(optim="stable_adamw"), [("optim", "optimi", "pip install torch-optimi", False)]),
        (dict(optim="adamw_torch_4bit"), [("optim", "torchao", "pip install torchao", False)]),
        (dict(optim="adamw_torch_8bit"), [("optim", "torchao", "pip install torchao", False)]),
        (dict(optim="adamw_anyprecision"), [("optim", "torchdistx", "pip install torchdistx", False)]),
        (dict(optim="adamw_torch"), []),
        (dict(optim="adafactor"), []),
        (dict(optim="sgd"), []),
        (dict(deepspeed="ds.json"), [("deepspeed", "deepspeed", "pip install 'ftq[deepspeed]'", True)]),
    ],
)  # fmt: skip
def test_what_each_key_needs(fields: dict, expected: list) -> None:
    assert asked(spec(**fields)) == expected


@pytest.mark.parametrize("optim", ["adamw_torch_xla", "adamw_torch_npu_fused"])
def test_optimizers_of_other_hardware_are_refused(optim: str) -> None:
    (need,) = needs(spec(optim=optim), None)
    assert need.refused and need.field == "optim"
    assert missing([need], gpus=1, find=everything) == [("optim", need.why)]
    assert "which ftq does not run on: use adamw_torch" in need.why


@pytest.mark.parametrize(
    ("quant_method", "expected"),
    [
        ("gptq", [("model_name_or_path", "gptqmodel", "pip install gptqmodel", False),
                  ("model_name_or_path", "optimum", "pip install optimum", False)]),
        ("awq", [("model_name_or_path", "gptqmodel", "pip install gptqmodel", True)]),
        ("aqlm", [("model_name_or_path", "aqlm", "pip install 'aqlm[gpu,cpu]'", False)]),
        ("hqq", [("model_name_or_path", "hqq", "pip install hqq", True)]),
        ("bitsandbytes", [("model_name_or_path", *BNB)]),
        ("compressed-tensors", [("model_name_or_path", "compressed_tensors", "pip install compressed-tensors", False)]),
        ("eetq", [("model_name_or_path", "kernels", "pip install kernels", True)]),
        ("quanto", [("model_name_or_path", "optimum.quanto", "pip install optimum-quanto", False)]),
        ("torchao", [("model_name_or_path", "torchao", "pip install torchao", False)]),
        ("fp8", [("model_name_or_path", None, None, True)]),
        ("mxfp4", []),
    ],
)  # fmt: skip
def test_a_pre_quantized_checkpoint_needs_its_kernels(quant_method: str, expected: list) -> None:
    config = {"model_type": "llama", "quantization_config": {"quant_method": quant_method, "bits": 4}}
    assert asked(spec(), config) == expected
    # the checkpoint's own quantization wins over quantization_bit (LLaMA-Factory ignores it): no bitsandbytes
    assert asked(spec(quantization_bit=4), config) == expected


@pytest.mark.parametrize("quant_method", ["gguf", "vptq", "spqr", "higgs", "fbgemm_fp8", "made_up"])
def test_a_checkpoint_transformers_cannot_train_is_refused(quant_method: str) -> None:
    (need,) = needs(spec(), {"quantization_config": {"quant_method": quant_method}})
    assert need.refused and need.field == "model_name_or_path" and quant_method in need.why


def test_a_pre_quantized_checkpoint_trains_lora_or_oft_only_without_pissa_and_dora_only_on_bnb() -> None:
    gptq = {"quantization_config": {"quant_method": "gptq"}}
    refused = {n.field: n.why for n in needs(spec(finetuning_type="full"), gptq) if n.refused}
    assert refused == {"finetuning_type": "the gptq-quantized checkpoint in model_name_or_path trains with "
                       "finetuning_type lora or oft only, not full (as in LLaMA-Factory)"}  # fmt: skip
    assert not [n for n in needs(spec(finetuning_type="oft"), gptq) if n.refused]
    assert [n.field for n in needs(spec(pissa_init=True, use_dora=True), gptq) if n.refused] == [
        "pissa_init",
        "use_dora",
    ]
    bnb = {"quantization_config": {"quant_method": "bitsandbytes"}}
    assert not [n for n in needs(spec(use_dora=True), bnb) if n.refused]
    fp8 = {"quantization_config": {"quant_method": "fp8"}}  # dequantized on load: any method trains
    assert not [n for n in needs(spec(finetuning_type="full"), fp8) if n.refused]


def test_missing_says_what_is_not_installed_and_how_to_install_it() -> None:
    found = missing(needs(spec(quantization_bit=4), None), gpus=1, find=nothing)
    assert found == [("quantization_bit", "4-bit QLoRA (quantization_bit: 4) needs the bitsandbytes package, "
                      "which is not installed here: pip install 'ftq[gpu]'")]  # fmt: skip
    assert missing(needs(spec(quantization_bit=4), None), gpus=1, find=everything) == []


def test_missing_refuses_a_gpu_only_need_on_a_cpu_slot_or_without_cuda() -> None:
    wants = needs(spec(flash_attn="fa2"), None)
    assert missing(wants, gpus=0, find=everything) == [
        ("flash_attn", f"FlashAttention-2 (flash_attn: fa2) {NO_GPU_SLOT}")
    ]
    assert missing(wants, gpus=1, find=everything, cuda=False) == [
        ("flash_attn", f"FlashAttention-2 (flash_attn: fa2) {NO_CUDA}")
    ]
    ((field, both),) = missing(wants, gpus=0, find=nothing)
    assert field == "flash_attn" and both == (
        "FlashAttention-2 (flash_attn: fa2) needs the flash_attn package, which is not installed here: "
        "pip install flash-attn --no-build-isolation; it also needs a GPU: this job asks for a CPU slot (gpus: 0)"
    )
    assert missing(needs(spec(use_galore=True, finetuning_type="full"), None), gpus=0, find=everything) == []


def test_a_dotted_package_whose_parent_is_missing_counts_as_missing() -> None:
    def find(name: str) -> Any:
        raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}")

    need = Need("model_name_or_path", "optimum.quanto", "pip install optimum-quanto", False, "quanto")
    assert missing([need], gpus=1, find=find) == [
        ("model_name_or_path", "quanto needs the optimum.quanto package, which is not installed here: "
         "pip install optimum-quanto")
    ]  # fmt: skip


def test_the_default_find_looks_without_importing() -> None:
    assert missing([Need("x", "json", "pip install json", False, "json")], gpus=0) == []
    assert missing([Need("x", "no_such_package_ftq", "pip install it", False, "it")], gpus=0)


@pytest.mark.parametrize(
    ("fields", "field", "expected"),
    [
        (dict(plot_loss=True), "plot_loss", "drawing the loss plots (plot_loss: true) needs the matplotlib package, "
         "which is not installed here: pip install 'ftq[plot]'"),
        (dict(report_to="tensorboard"), "report_to", "writing TensorBoard event files (report_to: tensorboard) needs "
         "the tensorboard package, which is not installed here: pip install 'ftq[tensorboard]'"),
        (dict(report_to=["wandb", "tensorboard"]), "report_to", "writing TensorBoard event files (report_to: "
         "tensorboard) needs the tensorboard package, which is not installed here: pip install 'ftq[tensorboard]'"),
    ],
)  # fmt: skip
def test_plots_and_tensorboard_are_refused_without_their_extra_on_any_slot(fields: dict, field: str, expected: str):
    wants = needs(spec(**fields), None)
    assert missing(wants, gpus=0, find=nothing) == [(field, expected)]
    assert missing(wants, gpus=1, find=nothing, cuda=False) == [(field, expected)]
    assert missing(wants, gpus=0, find=everything) == []  # no GPU needed: a CPU slot draws and logs as well


@pytest.mark.parametrize("fields", [dict(report_to="wandb"), dict(report_to="none"), dict(plot_loss=False)])
def test_integrations_ftq_does_not_run_need_nothing(fields: dict):
    assert needs(spec(**fields), None) == []
