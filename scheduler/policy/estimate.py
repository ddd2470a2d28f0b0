"""How many bytes a fine-tune needs per GPU at its peak, from config.json and the job spec.

The scheduler must decide where a job fits before any weights are loaded, so
this reads only the model's shape and counts what a training step keeps alive
at its peak (the start of backward): weights, gradients, optimizer states,
saved activations, the logits of the loss, and the CUDA context with allocator
slack. The target is what `torch.cuda.max_memory_reserved` reports plus the
context, erring slightly high: an under-estimate is an OOM. Pure: no torch,
no I/O (the loop and admission read config.json and hand it in).

It knows the batching modes of worker.spec.batching as the worker runs them: a
flattened batch (padding_free, neat_packing) is one row of at most micro-batch x
cutoff_len tokens and has no attention mask, so no mask term; plain packing and
padded batches keep the mask. The fused cross-entropy keeps only one chunk of
logits alive (worker.spec.loss_chunks), except where the worker falls back to the
whole logits: a model that changes its logits or adds a loss, ZeRO-3, a MoE
aux loss turned on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scheduler.policy.model_shape import LORA_MODULES, ModelShape, lora_modules
from worker.spec.loss_chunks import FULL_LOGITS, chunk_tokens, loss_kernel
from worker.spec.units import GIB

if TYPE_CHECKING:
    from worker.spec.job import JobSpec

# Bytes per trainable parameter (weights, gradients, optimizer) by precision, AdamW.
# AMP (bf16/fp16 without pure_bf16): fp32 parameters act as the master copy and are
# counted with the optimizer (4 + m 4 + v 4), fp32 gradients, and the bf16 copies
# autocast makes of each weight, which autograd keeps for backward until that layer's
# gradient is done, so they are alive at the peak (torch.amp cache; DeepSpeed's bf16
# module copy plays the same part). pure_bf16: everything bf16 (LLaMA-Factory's
# README table: 60 GB for 7B). fp32: no copies.
TRAINABLE_BYTES = {"amp": (2, 4, 12), "pure_bf16": (2, 2, 4), "fp32": (4, 4, 8)}
# Frozen parameters: kept in the compute dtype (the worker loads the LoRA base in it).
FROZEN_BYTES = {"amp": 2, "pure_bf16": 2, "fp32": 4}
# bitsandbytes NF4: 4 bits plus double-quantized absmax constants (8 bits per block of
# 64, plus fp32 per 256 blocks = 0.127 bits/param); LLM.int8: 1 byte (+ a per-row scale).
QUANT_BYTES = {4: 0.5 + (8 / 64 + 32 / (64 * 256)) / 8, 8: 1.0}
# LLaMA-Factory's freeze_trainable_layers default: the last 2 decoder layers train.
FREEZE_TRAINABLE_LAYERS = 2
# The loss path at its peak (backward of log-softmax), bytes per logit: the saved fp32
# log-softmax output (4), its incoming gradient (4), the outgoing gradient (4) and the
# bf16 gradient for lm_head (2). Fits the calibration to within a few percent.
LOGITS_BYTES = 14
# peft casts each adapter's input to fp32 (the adapters' dtype) and autocast casts it
# back: the transient fp32 copies interleave with saved tensors and fragment the caching
# allocator. Fitted on the H100 calibration (Qwen2.5-0.5B, Llama-3.2-1B, LoRA r8).
LORA_ACTIVATION_FACTOR = 1.3
# ZeRO-3 gathers the parameters of the module running and of the one prefetched.
ZERO3_LIVE_MODULES = 2
# CUDA context per process as nvidia-smi shows it (H100, torch 2.x, lazy module
# loading ~0.5 GiB; not in max_memory_reserved, but it is on the GPU).
CUDA_CONTEXT_BYTES = GIB // 2
# Caching-allocator slack over the sum of tensors (block rounding, fragmentation).
ALLOCATOR_SLACK = 0.05


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one GPU needs at the peak of a training step, by what holds them."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    overhead: int  # CUDA context + allocator slack
    parameters: int
    trainable_parameters: int
    gpus: int = 1

    @property
    def per_gpu(self) -> int:
        """What each GPU must have free: the sum of the breakdown."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.overhead

    @property
    def total(self) -> int:
        """The whole job: per_gpu on each of its GPUs."""
        return self.per_gpu * self.gpus

    def to_dict(self) -> dict[str, float | int]:
        """GiB rounded to 0.01 for an API, counts as integers."""
        parts = ("weights", "gradients", "optimizer", "activations", "logits", "overhead", "per_gpu", "total")
        out: dict[str, float | int] = {f"{p}_gib": round(getattr(self, p) / GIB, 2) for p in parts}
        out.update(parameters=self.parameters, trainable_parameters=self.trainable_parameters, gpus=self.gpus)
        return out


def _activation_bytes_per_token_layer(
    shape: ModelShape, finetuning_type: str, targets: tuple[str, ...], act: int, amp_fp32_weights: bool
) -> float:
    """What autograd saves in one block per token (HF Llama block, SDPA: no seq^2 scores).

    Both RMSNorms save their fp32 input (4h). SDPA saves q, k, v (repeated to all
    heads when a padding mask stops native GQA) and its output. The SiLU-gated MLP
    saves gate, silu(gate) and up. A trainable linear saves its input; with LoRA only
    the targeted modules do, as the copy peft/autocast make of it.
    """
    h, q, i = shape.hidden_size, shape.num_attention_heads * shape.head_dim, shape.intermediate_size
    common = 2 * 4 * h + 4 * act * q + 3 * act * i
    if finetuning_type == "lora":
        shapes = shape.linear_shapes()
        return (common + act * sum(shapes[m][0] for m in targets)) * LORA_ACTIVATION_FACTOR
    # Full/freeze: each norm saves its bf16 output (shared with the next linears' input),
    # plus o_proj's and down_proj's inputs; AMP with fp32 weights also keeps the bf16
    # cast of each norm's fp32 output for the linears.
    return common + 2 * act * h + act * q + act * i + (2 * act * h if amp_fp32_weights else 0)


def estimate_memory(
    shape: ModelShape,
    *,
    finetuning_type: str,
    lora_rank: int,
    lora_target: str,
    micro_batch: int,
    cutoff_len: int,
    gradient_checkpointing: bool,
    bf16: bool,
    fp16: bool,
    pure_bf16: bool,
    quantization_bit: int | None = None,
    zero_stage: int = 0,
    offload_optimizer: bool = False,
    offload_params: bool = False,
    gpus: int = 1,
    freeze_layers: int = FREEZE_TRAINABLE_LAYERS,
    padding_free: bool = False,
    fused_cross_entropy: bool = False,
) -> MemoryEstimate:
    """Peak bytes per GPU for one fine-tune; every sample is counted at cutoff_len tokens (an upper bound).

    padding_free: the micro-batch is one flattened row without an attention mask.
    fused_cross_entropy: only one chunk of logits (worker.spec.loss_chunks.chunk_tokens) is alive at once.
    """
    _check_method(finetuning_type, quantization_bit)
    n = max(gpus, 1)
    precision = "pure_bf16" if pure_bf16 else "amp" if (bf16 or fp16) else "fp32"
    act = 4 if precision == "fp32" else 2
    targets = lora_modules(lora_target) if finetuning_type == "lora" else LORA_MODULES
    trainable, frozen_bytes = _trainable_and_frozen(
        shape, finetuning_type, precision, lora_rank, lora_target, quantization_bit, freeze_layers
    )
    zero = _Zero(zero_stage, n, offload_optimizer, offload_params)
    weights, gradients, optimizer = _model_states(shape, trainable, frozen_bytes, precision, act, zero)
    tokens = micro_batch * cutoff_len
    per_layer = _activation_bytes_per_token_layer(
        shape, finetuning_type, targets, act, precision == "amp" and finetuning_type != "lora"
    )
    layers = shape.num_hidden_layers
    saving = min(freeze_layers, layers) if finetuning_type == "freeze" else layers  # the blocks that save theirs
    activations = _activations(
        shape, per_layer, act, micro_batch, cutoff_len, gradient_checkpointing, saving, padding_free
    )
    # The chunked loss computes, backpropagates and frees one chunk at a time: its peak is one chunk's logits.
    logit_tokens = min(tokens, chunk_tokens(shape.vocab_size)) if fused_cross_entropy else tokens
    logits = logit_tokens * shape.vocab_size * LOGITS_BYTES
    tensors = weights + gradients + optimizer + activations + logits
    return MemoryEstimate(
        weights=round(weights),
        gradients=round(gradients),
        optimizer=round(optimizer),
        activations=round(activations),
        logits=round(logits),
        overhead=round(CUDA_CONTEXT_BYTES + ALLOCATOR_SLACK * tensors),
        parameters=shape.parameter_count(),
        trainable_parameters=trainable,
        gpus=n,
    )


def _check_method(finetuning_type: str, quantization_bit: int | None) -> None:
    if finetuning_type not in ("lora", "full", "freeze"):
        raise ValueError(f"finetuning_type {finetuning_type!r}: expected lora, full or freeze")
    if quantization_bit not in (None, 4, 8):
        raise ValueError(f"quantization_bit {quantization_bit!r}: expected 4, 8 or none")
    if quantization_bit is not None and finetuning_type != "lora":
        raise ValueError("quantization_bit needs finetuning_type lora (QLoRA)")


def _trainable_and_frozen(
    shape: ModelShape,
    finetuning_type: str,
    precision: str,
    lora_rank: int,
    lora_target: str,
    quantization_bit: int | None,
    freeze_layers: int,
) -> tuple[int, float]:
    """(trainable parameters, bytes of the frozen ones) by method: full, freeze, LoRA (QLoRA when quantized)."""
    total = shape.parameter_count()
    layers = shape.num_hidden_layers
    if finetuning_type == "full":
        return total, 0.0
    if finetuning_type == "freeze":
        trainable = min(freeze_layers, layers) * shape.layer_parameters()
        return trainable, (total - trainable) * FROZEN_BYTES[precision]
    trainable = shape.lora_parameters(lora_rank, lora_target)
    if quantization_bit is None:
        return trainable, total * FROZEN_BYTES[precision]
    # Block linears quantized; embeddings, lm_head, norms, biases stay in the compute dtype.
    quantized = layers * shape.layer_linear_weights()
    return trainable, quantized * QUANT_BYTES[quantization_bit] + (total - quantized) * FROZEN_BYTES[precision]


@dataclass(frozen=True)
class _Zero:
    """How DeepSpeed ZeRO splits the model states over the job's GPUs (stage 0: DDP, each GPU holds all)."""

    stage: int
    gpus: int
    offload_optimizer: bool
    offload_params: bool


def _model_states(
    shape: ModelShape, trainable: int, frozen_bytes: float, precision: str, act: int, zero: _Zero
) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes on one GPU."""
    w_bytes, g_bytes, o_bytes = TRAINABLE_BYTES[precision]
    n = zero.gpus
    # ZeRO-1 partitions optimizer states, ZeRO-2 also gradients, ZeRO-3 also weights.
    weights = (trainable * w_bytes + frozen_bytes) / (n if zero.stage >= 3 else 1)
    gradients = trainable * g_bytes / (n if zero.stage >= 2 else 1)
    optimizer = trainable * o_bytes / (n if zero.stage >= 1 else 1)
    if n > 1 and zero.stage == 0:
        gradients *= 2  # DDP's flat buckets (gradient_as_bucket_view=False) are a second copy
    if zero.stage >= 3:
        live = ZERO3_LIVE_MODULES * max(shape.layer_parameters(), shape.embedding_parameters()) * act
        weights = live + (0 if zero.offload_params else weights)
    if zero.offload_optimizer:
        optimizer = 0
    return weights, gradients, optimizer


def _activations(
    shape: ModelShape,
    per_layer: float,
    act: int,
    micro_batch: int,
    cutoff_len: int,
    gradient_checkpointing: bool,
    saving_layers: int,
    padding_free: bool,
) -> float:
    """Saved activation bytes at the peak; `saving_layers`: the blocks that save theirs (freeze: the trained)."""
    layers = shape.num_hidden_layers
    tokens = micro_batch * cutoff_len
    # A padded batch (micro-batch > 1) has an explicit attention mask; SDPA turns it into
    # an additive one (batch x 1 x seq x seq, compute dtype) for the memory-efficient
    # kernel and saves that per layer. A single sequence runs is_causal with no mask,
    # and so does a flattened batch (samples told apart by their position ids).
    mask = micro_batch * cutoff_len**2 * act if micro_batch > 1 and not padding_free else 0
    if gradient_checkpointing:  # each block keeps its input; one block is recomputed at a time
        activations = tokens * (layers * act * shape.hidden_size + per_layer) + mask
    else:
        activations = saving_layers * (tokens * per_layer + mask)
    return activations + tokens * (4 + act) * shape.hidden_size  # final norm and lm_head input


def zero_from_deepspeed(config: dict[str, Any] | None) -> tuple[int, bool, bool]:
    """(stage, offload_optimizer, offload_params) from a parsed DeepSpeed JSON; None is no ZeRO."""
    zero = (config or {}).get("zero_optimization") or {}
    offloaded = [str((zero.get(key) or {}).get("device", "none")).lower() in ("cpu", "nvme")
                 for key in ("offload_optimizer", "offload_param")]  # fmt: skip
    return int(zero.get("stage", 0)), offloaded[0], offloaded[1]


def flattens(spec: JobSpec) -> bool:
    """Whether the worker feeds this spec's micro-batches as one row without an attention mask.

    neat_packing always does; padding_free does unless plain packing asks for rows of
    cutoff_len that attend across samples (an all-ones mask, counted as a padded batch).
    """
    return spec.neat_packing or (spec.padding_free and not spec.packing)


def fused_loss_applies(config: dict[str, Any], spec: JobSpec, zero_stage: int) -> bool:
    """Whether the worker computes this job's loss without the whole logits (Liger's or ftq's chunked loss).

    The worker's own decision (worker.spec.loss_chunks.loss_kernel): a model that changes its logits or adds a
    loss, and ZeRO-3, keep the full logits. Liger and the chunked loss both hold about one chunk at a time.
    """
    return loss_kernel(spec, config, cuda=False, zero_stage=zero_stage, liger_installed=False) != FULL_LOGITS


def estimate_for_spec(config: dict[str, Any], spec: JobSpec, deepspeed_config: dict[str, Any] | None) -> MemoryEstimate:
    """The estimate for a job spec; the caller reads config.json and the DeepSpeed JSON."""
    stage, offload_optimizer, offload_params = zero_from_deepspeed(deepspeed_config)
    # OFT, like LoRA, trains small adapters beside a frozen (perhaps quantized) base: estimated as LoRA of its rank.
    method = "lora" if spec.finetuning_type == "oft" else spec.finetuning_type
    rank = (spec.oft_rank or spec.oft_block_size) if spec.finetuning_type == "oft" else spec.lora_rank
    target = spec.oft_target if spec.finetuning_type == "oft" else spec.lora_target
    return estimate_memory(
        ModelShape.from_config(config),
        finetuning_type=method,
        lora_rank=rank,
        lora_target=target,
        micro_batch=spec.per_device_train_batch_size,
        cutoff_len=spec.cutoff_len,
        gradient_checkpointing=spec.gradient_checkpointing,
        bf16=spec.bf16,
        fp16=spec.fp16,
        pure_bf16=spec.pure_bf16,
        quantization_bit=spec.quantization_bit,
        zero_stage=stage,
        offload_optimizer=offload_optimizer,
        offload_params=offload_params,
        gpus=spec.gpus,
        freeze_layers=abs(spec.freeze_trainable_layers) or FREEZE_TRAINABLE_LAYERS,
        padding_free=flattens(spec),
        fused_cross_entropy=fused_loss_applies(config, spec, stage),
    )
