"""What a job needs from the machine that runs it: a package, a GPU, or something no machine here gives.

The server asks at submit and the worker asks again before it loads anything (a
package may have gone since, and a worker may see no CUDA device), so both refuse
in the same words: `needs(spec, model_config)` lists what the spec and the model's
config.json ask for, `missing(needs, gpus)` says what of it this machine lacks.

Pure: importlib.util.find_spec looks for a package without importing it, so the
server never imports torch (or a CUDA extension) to answer.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from worker.spec.methods import MethodError, effective_optim

if TYPE_CHECKING:
    from worker.spec.job import JobSpec

GPU_EXTRA = "pip install 'ftq[gpu]'"  # bitsandbytes and liger-kernel
DEEPSPEED_EXTRA = "pip install 'ftq[deepspeed]'"
PLOT_EXTRA = "pip install 'ftq[plot]'"  # matplotlib
TENSORBOARD_EXTRA = "pip install 'ftq[tensorboard]'"
NO_GPU_SLOT = "needs a GPU: this job asks for a CPU slot (gpus: 0)"
NO_CUDA = "needs a GPU: no CUDA device is visible to this worker"


class Need(NamedTuple):
    """One thing a job needs; `why` names what asks for it, or (refused) why it cannot run here at all."""

    field: str  # the spec key that asks for it
    package: str | None  # the import name to look for; None: no package, only a GPU (or a refusal)
    pip: str | None  # how to install the package
    gpu_only: bool
    why: str
    refused: bool = False


# quant_method of a pre-quantized checkpoint -> ((import name, pip command), ...), GPU only. As transformers 5
# loads them (its quantizers' validate_environment): AWQ through gptqmodel (autoawq is gone), GPTQ with optimum.
PRE_QUANTIZED: dict[str, tuple[tuple[tuple[str, str], ...], bool]] = {
    "gptq": ((("gptqmodel", "pip install gptqmodel"), ("optimum", "pip install optimum")), False),
    "awq": ((("gptqmodel", "pip install gptqmodel"),), True),
    "aqlm": ((("aqlm", "pip install 'aqlm[gpu,cpu]'"),), False),
    "hqq": ((("hqq", "pip install hqq"),), True),
    "bitsandbytes": ((("bitsandbytes", GPU_EXTRA),), True),
    "bitsandbytes_4bit": ((("bitsandbytes", GPU_EXTRA),), True),
    "bitsandbytes_8bit": ((("bitsandbytes", GPU_EXTRA),), True),
    "eetq": ((("kernels", "pip install kernels"),), True),
    "quanto": ((("optimum.quanto", "pip install optimum-quanto"),), False),
    "torchao": ((("torchao", "pip install torchao"),), False),
    "compressed-tensors": ((("compressed_tensors", "pip install compressed-tensors"),), False),
    "sinq": ((("sinq", "pip install sinq"),), False),
    # dequantized to bf16 on load, as LLaMA-Factory loads them for training (worker.model.quantize)
    "fp8": ((), True),
    "mxfp8": ((), True),
    "mxfp4": ((), False),
}
DEQUANTIZED = ("fp8", "mxfp8", "mxfp4")
# Methods transformers cannot train (their quantizer's is_trainable is false, or only in modes ftq does not set up).
NOT_TRAINABLE = (
    "auto-round", "bitnet", "fbgemm_fp8", "fouroversix", "fp_quant", "gemma", "gguf", "higgs", "metal", "nvfp4",
    "quark", "spqr", "vptq",
)  # fmt: skip

# optim name (or its start) -> ((import name, pip command), GPU only); the first entry that matches wins.
OPTIM_PACKAGES: tuple[tuple[str, tuple[tuple[str, str], ...], bool], ...] = (
    ("galore_adamw_8bit", (("galore_torch", "pip install galore-torch"), ("bitsandbytes", GPU_EXTRA)), True),
    ("galore_", (("galore_torch", "pip install galore-torch"),), False),
    ("apollo_", (("apollo_torch", "pip install apollo-torch"),), False),
    ("lomo", (("lomo_optim", "pip install lomo-optim"),), False),
    ("adalomo", (("lomo_optim", "pip install lomo-optim"),), False),
    ("grokadamw", (("grokadamw", "pip install grokadamw"),), False),
    ("schedule_free_", (("schedulefree", "pip install schedulefree"),), False),
    ("stable_adamw", (("optimi", "pip install torch-optimi"),), False),
    ("adamw_torch_4bit", (("torchao", "pip install torchao"),), False),
    ("adamw_torch_8bit", (("torchao", "pip install torchao"),), False),
    ("adamw_anyprecision", (("torchdistx", "pip install torchdistx"),), False),
    # bitsandbytes' optimizers (8-bit states, paged memory, Lion, AdEMAMix, its RMSprop) run on CUDA
    ("adamw_8bit", (("bitsandbytes", GPU_EXTRA),), True),
    ("adamw_bnb_8bit", (("bitsandbytes", GPU_EXTRA),), True),
    ("paged_", (("bitsandbytes", GPU_EXTRA),), True),
    ("lion_", (("bitsandbytes", GPU_EXTRA),), True),
    ("ademamix", (("bitsandbytes", GPU_EXTRA),), True),
    ("rmsprop_bnb", (("bitsandbytes", GPU_EXTRA),), True),
)
OPTIM_ELSEWHERE = {
    "adamw_torch_xla": "runs on TPUs (torch_xla)",
    "adamw_torch_npu_fused": "runs on Ascend NPUs (torch_npu)",
}


def needs(spec: JobSpec, model_config: dict[str, Any] | None) -> list[Need]:
    """Everything the spec and the model's config.json (None: not read) ask of the machine."""
    found = _quantization_needs(spec, model_config)
    if spec.flash_attn == "fa2":
        found.append(Need("flash_attn", "flash_attn", "pip install flash-attn --no-build-isolation", True,
                          "FlashAttention-2 (flash_attn: fa2)"))  # fmt: skip
    elif spec.flash_attn == "fa3":
        found.append(Need("flash_attn", "flash_attn_interface", "build it from flash-attention's hopper/ directory",
                          True, "FlashAttention-3 (flash_attn: fa3)"))  # fmt: skip
    if spec.liger:
        key = "enable_liger_kernel" if spec.enable_liger_kernel else "use_liger_kernel"
        found.append(Need(key, "liger_kernel", GPU_EXTRA, True, f"Liger's fused kernels ({key})"))
    if spec.use_galore:
        found.append(Need("use_galore", "galore_torch", "pip install galore-torch", False, "GaLore (use_galore)"))
    if spec.use_apollo:
        found.append(Need("use_apollo", "apollo_torch", "pip install apollo-torch", False, "APOLLO (use_apollo)"))
    named = {need.package for need in found}  # use_galore / use_apollo name their package already
    found += [need for need in _optim_needs(spec) if need.package not in named]
    if spec.deepspeed is not None:
        found.append(Need("deepspeed", "deepspeed", DEEPSPEED_EXTRA, True, "DeepSpeed (deepspeed)"))
    if spec.plot_loss:
        found.append(Need("plot_loss", "matplotlib", PLOT_EXTRA, False, "drawing the loss plots (plot_loss: true)"))
    if spec.report_to == "tensorboard":
        why = "writing TensorBoard event files (report_to: tensorboard)"
        found.append(Need("report_to", "tensorboard", TENSORBOARD_EXTRA, False, why))
    return found


def _quantization_needs(spec: JobSpec, model_config: dict[str, Any] | None) -> list[Need]:
    quantization = (model_config or {}).get("quantization_config")
    if not isinstance(quantization, dict):
        if spec.quantization_bit is None:
            return []
        why = f"{spec.quantization_bit}-bit QLoRA (quantization_bit: {spec.quantization_bit})"
        return [Need("quantization_bit", "bitsandbytes", GPU_EXTRA, True, why)]
    method = str(quantization.get("quant_method", "")).lower()
    what = f"the {method or 'unnamed'}-quantized checkpoint in model_name_or_path"
    if method in NOT_TRAINABLE or method not in PRE_QUANTIZED:
        known = "transformers cannot train it" if method in NOT_TRAINABLE else "ftq does not know that quant_method"
        return [Need("model_name_or_path", None, None, False, f"{what}: {known}", refused=True)]
    packages, gpu_only = PRE_QUANTIZED[method]
    found = [Need("model_name_or_path", name, pip, gpu_only, what) for name, pip in packages]
    if not packages and gpu_only:
        found.append(Need("model_name_or_path", None, None, gpu_only, what))
    if method in DEQUANTIZED:
        return found
    if spec.finetuning_type not in ("lora", "oft"):
        why = f"{what} trains with finetuning_type lora or oft only, not {spec.finetuning_type} (as in LLaMA-Factory)"
        found.append(Need("finetuning_type", None, None, False, why, refused=True))
    if spec.pissa_init:
        found.append(Need("pissa_init", None, None, False, f"pissa_init cannot initialize PiSSA on {what}", True))
    if spec.use_dora and not method.startswith("bitsandbytes"):
        found.append(Need("use_dora", None, None, False, f"DoRA does not work on {what} (bitsandbytes only)", True))
    return found


def _optim_needs(spec: JobSpec) -> list[Need]:
    try:
        optim = effective_optim(spec)
    except MethodError:  # the spec reports it (worker.spec.methods.method_problems)
        return []
    if optim is None:
        return []
    if optim in OPTIM_ELSEWHERE:
        why = f"optim {optim} {OPTIM_ELSEWHERE[optim]}, which ftq does not run on: use adamw_torch"
        return [Need("optim", None, None, False, why, refused=True)]
    for start, packages, gpu_only in OPTIM_PACKAGES:
        if optim.startswith(start):
            return [Need("optim", name, pip, gpu_only, f"the {optim} optimizer (optim)") for name, pip in packages]
    return []


def missing(
    needs: list[Need],
    gpus: int,
    find: Callable[[str], Any] = importlib.util.find_spec,
    *,
    cuda: bool = True,
) -> list[tuple[str, str]]:
    """(field, refusal sentence) for each need this machine does not meet; empty when the job can run.

    `gpus` is what the job asks for; `cuda` whether a CUDA device is visible (the
    worker knows; the server, placing the job on GPUs it probed, leaves it true).
    """
    found = []
    for need in needs:
        if need.refused:
            found.append((need.field, need.why))
            continue
        lacks = []
        if need.package is not None and not _installed(need.package, find):
            lacks.append(f"the {need.package} package, which is not installed here: {need.pip}")
        if need.gpu_only and gpus == 0:
            lacks.append(NO_GPU_SLOT.removeprefix("needs "))
        elif need.gpu_only and not cuda:
            lacks.append(NO_CUDA.removeprefix("needs "))
        if lacks:
            found.append((need.field, f"{need.why} needs " + "; it also needs ".join(lacks)))
    return found


def _installed(package: str, find: Callable[[str], Any]) -> bool:
    try:
        return find(package) is not None
    except (ImportError, ValueError):  # a dotted name whose parent is missing, or a broken module spec
        return False
