"""What ftq does with every key a LLaMA-Factory SFT file or transformers' training arguments may hold.

Every key has a fate, and none is silent:

- honoured: a field of `JobSpec` (worker.spec.job), steering what ftq does;
- passed to transformers' `TrainingArguments` as it is: a field of `PassedToTrainer` (worker.spec.passed),
  typed there so that a bad value is a 422 at submit rather than a failure in the worker;
- accepted without effect (`WITHOUT_EFFECT`), because ftq owns what it steers (where output goes, resuming,
  reporting) or because it only matters to what ftq does not run (inference, export): kept in the job's
  spec and listed in its public `notes` with the reason; an honoured key may be so in part
  (`PARTLY_WITHOUT_EFFECT`: report_to's integrations other than tensorboard);
- refused at submit (`REFUSED`) with the reason: a method ftq does not run, another engine, multimodal data.

A value equal to LLaMA-Factory's default (or transformers', for its keys) is always accepted: it asks for
nothing, whatever the key's fate (`resume_from_checkpoint: null`, `use_badam: false`). A key nobody knows is
a 422 naming it, with the nearest known key.

Pure data and two small functions: the server, the worker and the README's table all read it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

# --- reasons shared by several keys ---
INFERENCE = "used by LLaMA-Factory's inference and chat only; ftq trains"
EXPORT = "used by `llamafactory-cli export`; ftq trains, export the result with it afterwards"
RLHF = "used by the rm / ppo / dpo / kto stages only; ftq runs sft"
NO_NETWORK = "ftq loads models and data from local paths only and has no network at run time"
MULTIMODAL = "multimodal (image, video, audio) training is not run by ftq; it trains text-only models"
REPORTING = "ftq streams every metric itself (GET /jobs/{id}/metrics, ftq watch) and reports to no service"
LAUNCH = "ftq launches the workers itself (torchrun for several GPUs) and sets this"
RAY = "ftq places jobs on GPUs itself; ask for GPUs with `gpus`"
PROFILER = "the torch profiler is not run by ftq"
MEGATRON = "Megatron-Core (mcore_adapter) is another engine, not run by ftq"
HYPER_PARALLEL = "hyper-parallel is another engine, not run by ftq"
KTRANSFORMERS = "KTransformers is another engine, not run by ftq"
FSDP = "ftq runs multi-GPU jobs with DDP or DeepSpeed, not FSDP; give a DeepSpeed ZeRO-3 config instead"
PREDICT = "ftq trains; it does not run prediction or generation (run it on the result with llamafactory-cli)"
VOCAB = "changing the tokenizer's vocabulary is not run by ftq; add the tokens to the model directory's tokenizer"
LF_OWN_METHOD = "is LLaMA-Factory's own code, not in transformers or a maintained package; ftq does not run it"

# Keys whose values ftq never shows back (in notes or errors): they would put a credential in the database.
SECRETS = frozenset(
    {
        "hf_hub_token",
        "ms_hub_token",
        "om_hub_token",
        "hub_token",
        "push_to_hub_token",
        "swanlab_api_key",
        "swanlab_lark_secret",
    }
)

# key -> (the default that asks for nothing, why the key changes nothing here)
WITHOUT_EFFECT: dict[str, tuple[Any, str]] = {
    # where output goes and resuming: ftq owns both
    "resume_from_checkpoint": (
        None,
        "ftq resumes a requeued job from the job's own checkpoints; a checkpoint named here is not loaded",
    ),
    "logging_dir": (None, "ftq writes TensorBoard's event files (report_to: tensorboard) into the job's run dir"),
    "include_effective_tokens_per_second": (False, "ftq reports throughput in every metric record"),
    "include_tokens_per_second": (False, "ftq reports throughput in every metric record"),
    "include_num_input_tokens_seen": (False, "ftq counts the tokens seen itself (total_tokens in every record)"),
    "disable_tqdm": (None, "ftq writes no progress bars: progress is in the metrics"),
    "save_safetensors": (True, "ftq always saves safetensors"),
    "remove_unused_columns": (True, "ftq's data collator needs every column it builds"),
    "label_names": (None, "ftq's examples carry their labels under `labels`"),
    "block_diag_attn": (False, "LLaMA-Factory sets it from neat_packing; set neat_packing: true instead"),
    "length_column_name": ("length", "ftq's examples have no length column; group_by_length measures input_ids"),
    "local_rank": (-1, LAUNCH),
    "use_cpu": (False, "ftq runs a job on a CPU slot when it asks for `gpus: 0`, on GPUs otherwise"),
    "no_cuda": (False, "ftq runs a job on a CPU slot when it asks for `gpus: 0`, on GPUs otherwise"),
    "use_mps_device": (False, "ftq runs on NVIDIA GPUs or CPU slots"),
    "master_addr": (None, LAUNCH),
    "master_port": (None, LAUNCH),
    "ray_num_workers": (1, RAY),
    "ray_init_kwargs": (None, RAY),
    "ray_scope": ("last", RAY),
    "quantization_device_map": (None, "ftq places the model on the GPUs it gives the job"),
    "device_map": (None, "ftq places the model on the GPUs it gives the job"),
    "compute_dtype": (None, "set by LLaMA-Factory itself from bf16 / fp16; ftq does the same"),
    "model_max_length": (None, "set by LLaMA-Factory itself from cutoff_len; ftq truncates at cutoff_len"),
    "low_cpu_mem_usage": (True, "transformers always loads this way now"),
    "cache_dir": (None, NO_NETWORK),
    "model_revision": ("main", "a local model directory holds one revision; ftq loads what is there"),
    "hf_hub_token": (None, NO_NETWORK),
    "ms_hub_token": (None, NO_NETWORK),
    "om_hub_token": (None, NO_NETWORK),
    "data_shared_file_system": (False, "ftq tokenizes once per job, in its rank 0"),
    "overwrite_cache": (False, "ftq keeps no datasets cache; a tokenized_path is rebuilt when its data changed"),
    "ignore_pad_token_for_loss": (True, "padding is always left out of the loss"),
    "buffer_size": (16384, "used with streaming only, which ftq does not run"),
    "print_param_status": (False, "the worker's log says how many parameters train"),
    "use_kv_cache": (True, INFERENCE),
    "infer_backend": ("huggingface", INFERENCE),
    "infer_dtype": ("auto", INFERENCE),
    "offload_folder": ("offload", INFERENCE),
    "eval_num_beams": (None, PREDICT),
    "sortish_sampler": (False, "used by Seq2SeqTrainer only; ftq trains causal LMs with Trainer"),
    "generation_max_length": (None, PREDICT),
    "generation_num_beams": (None, PREDICT),
    "generation_config": (None, PREDICT),
    "do_sample": (True, INFERENCE),
    "temperature": (0.95, INFERENCE),
    "top_p": (0.7, INFERENCE),
    "top_k": (50, INFERENCE),
    "num_beams": (1, INFERENCE),
    "max_length": (1024, INFERENCE),
    "max_new_tokens": (1024, INFERENCE),
    "repetition_penalty": (1.0, INFERENCE),
    "length_penalty": (1.0, INFERENCE),
    "skip_special_tokens": (True, INFERENCE),
    "default_system_prompt": (None, INFERENCE),
    "vllm_maxlen": (4096, INFERENCE),
    "vllm_gpu_util": (0.7, INFERENCE),
    "vllm_enforce_eager": (False, INFERENCE),
    "vllm_max_lora_rank": (32, INFERENCE),
    "vllm_config": (None, INFERENCE),
    "sglang_maxlen": (4096, INFERENCE),
    "sglang_mem_fraction": (0.7, INFERENCE),
    "sglang_tp_size": (-1, INFERENCE),
    "sglang_config": (None, INFERENCE),
    "sglang_lora_backend": ("triton", INFERENCE),
    "export_dir": (None, EXPORT),
    "export_size": (5, EXPORT),
    "export_device": ("cpu", EXPORT),
    "export_quantization_bit": (None, EXPORT),
    "export_quantization_dataset": (None, EXPORT),
    "export_quantization_nsamples": (128, EXPORT),
    "export_quantization_maxlen": (1024, EXPORT),
    "export_legacy_format": (False, EXPORT),
    "export_hub_model_id": (None, EXPORT),
    "pref_beta": (0.1, RLHF),
    "pref_ftx": (0.0, RLHF),
    "pref_bco_weight": (0.0, RLHF),
    "pref_loss": ("sigmoid", RLHF),
    "dpo_label_smoothing": (0.0, RLHF),
    "kto_chosen_weight": (1.0, RLHF),
    "kto_rejected_weight": (1.0, RLHF),
    "simpo_gamma": (0.5, RLHF),
    "ppo_buffer_size": (1, RLHF),
    "ppo_epochs": (4, RLHF),
    "ppo_score_norm": (False, RLHF),
    "ppo_target": (6.0, RLHF),
    "ppo_whiten_rewards": (False, RLHF),
    "ref_model": (None, RLHF),
    "ref_model_adapters": (None, RLHF),
    "ref_model_quantization_bit": (None, RLHF),
    "reward_model": (None, RLHF),
    "reward_model_adapters": (None, RLHF),
    "reward_model_quantization_bit": (None, RLHF),
    "reward_model_type": ("lora", RLHF),
    "ld_alpha": (None, RLHF),
    "swanlab_project": ("llamafactory", REPORTING),
    "swanlab_workspace": (None, REPORTING),
    "swanlab_run_name": (None, REPORTING),
    "swanlab_mode": ("cloud", REPORTING),
    "swanlab_api_key": (None, REPORTING),
    "swanlab_logdir": (None, REPORTING),
    "swanlab_lark_webhook_url": (None, REPORTING),
    "swanlab_lark_secret": (None, REPORTING),
    "project": ("huggingface", REPORTING),
    "trackio_space_id": (None, REPORTING),
    "trackio_bucket_id": (None, REPORTING),
    "trackio_static_space_id": (None, REPORTING),
    "hub_token": (None, NO_NETWORK),
    "hub_private_repo": (None, NO_NETWORK),
    "hub_model_id": (None, NO_NETWORK),
    "hub_strategy": ("every_save", NO_NETWORK),
    "hub_always_push": (False, NO_NETWORK),
    "hub_revision": (None, NO_NETWORK),
    "push_to_hub_model_id": (None, NO_NETWORK),
    "push_to_hub_organization": (None, NO_NETWORK),
    "push_to_hub_token": (None, NO_NETWORK),
    "profiler_output_dir": (None, PROFILER),
    "profiler_wait_steps": (1, PROFILER),
    "profiler_warmup_steps": (1, PROFILER),
    "profiler_active_steps": (1, PROFILER),
    "profiler_repeat": (1, PROFILER),
    "profiler_record_shapes": (True, PROFILER),
    "profiler_profile_memory": (True, PROFILER),
    "profiler_with_stack": (True, PROFILER),
    "profile_modules": (None, PROFILER),
    "asft_alpha": (0.1, "used with use_asft_loss only, which ftq does not run"),
    "eaft_alpha": (1.0, "used with use_eaft_loss only, which ftq does not run"),
    "freeze_vision_tower": (True, "ftq trains text-only models, which have no vision tower"),
    "freeze_multi_modal_projector": (True, "ftq trains text-only models, which have no projector"),
    "image_max_pixels": (768 * 768, MULTIMODAL),
    "image_min_pixels": (32 * 32, MULTIMODAL),
    "image_do_pan_and_scan": (False, MULTIMODAL),
    "crop_to_patches": (False, MULTIMODAL),
    "video_max_pixels": (256 * 256, MULTIMODAL),
    "video_min_pixels": (16 * 16, MULTIMODAL),
    "video_fps": (2.0, MULTIMODAL),
    "video_maxlen": (128, MULTIMODAL),
    "use_audio_in_video": (False, MULTIMODAL),
    "audio_sampling_rate": (16000, MULTIMODAL),
    "badam_mode": ("layer", "used with use_badam only, which ftq does not run"),
    "badam_start_block": (None, "used with use_badam only, which ftq does not run"),
    "badam_switch_mode": ("ascending", "used with use_badam only, which ftq does not run"),
    "badam_switch_interval": (50, "used with use_badam only, which ftq does not run"),
    "badam_update_ratio": (0.05, "used with use_badam only, which ftq does not run"),
    "badam_mask_mode": ("adjacent", "used with use_badam only, which ftq does not run"),
    "badam_verbose": (0, "used with use_badam only, which ftq does not run"),
    "fp8_backend": ("auto", "used with fp8 only, which ftq does not run"),
    "fp8_enable_fsdp_float8_all_gather": (False, "used with fp8 only, which ftq does not run"),
    "hyper_parallel_args": (None, HYPER_PARALLEL),
    "kt_weight_path": (None, KTRANSFORMERS),
    "kt_expert_checkpoint_path": (None, KTRANSFORMERS),
    "kt_use_lora_experts": (None, KTRANSFORMERS),
    "kt_lora_expert_num": (None, KTRANSFORMERS),
    "kt_lora_expert_intermediate_size": (None, KTRANSFORMERS),
    "mp_parameters": ("", "SageMaker model parallelism is not run by ftq"),
    "past_index": (-1, "used by models with mems (Transformer-XL) only"),
    "jit_mode_eval": (False, PREDICT),
    "use_legacy_prediction_loop": (False, PREDICT),
    "include_inputs_for_metrics": (False, PREDICT),
    "tpu_metrics_debug": (False, "ftq runs on NVIDIA GPUs or CPU slots"),
}

# Honoured keys some of whose values ask for what ftq does not do: those values are kept in `without_effect`
# under the key and listed in the notes with this reason (report_to: [tensorboard, wandb] writes TensorBoard's
# files and notes wandb).
PARTLY_WITHOUT_EFFECT: dict[str, str] = {
    "report_to": f"{REPORTING}; of report_to's integrations ftq runs tensorboard alone (event files in the run dir)",
}

# key -> (the default that asks for nothing, why ftq refuses any other value)
REFUSED: dict[str, tuple[Any, str]] = {
    "adapter_folder": (None, "loading adapters from a folder is not run by ftq; name them in adapter_name_or_path"),
    "resize_vocab": (False, VOCAB),
    "split_special_tokens": (False, VOCAB),
    "add_tokens": (None, VOCAB),
    "add_special_tokens": (None, VOCAB),
    "new_special_tokens_config": (None, VOCAB),
    "init_special_tokens": ("noise_init", VOCAB),
    "rope_scaling": (None, "RoPE scaling is not run by this ftq yet; train at the model's own context length"),
    "shift_attn": (False, "shift short attention (S^2-Attn) is LLaMA-Factory's own patch; ftq does not run it"),
    "mixture_of_depths": (None, "mixture-of-depths (MoD) needs the MoD package's patched models; ftq does not run it"),
    "use_unsloth": (False, "ftq trains with transformers and peft; it does not load models through unsloth"),
    "use_unsloth_gc": (False, "unsloth's gradient checkpointing is not run by ftq; use gradient_checkpointing"),
    "train_from_scratch": (False, "ftq fine-tunes existing weights; it does not initialize a model from scratch"),
    "use_v1_kernels": (False, "LLaMA-Factory's v1 kernels are its own code; ftq does not run them"),
    "use_kt": (False, KTRANSFORMERS),
    "media_dir": (None, MULTIMODAL),
    "streaming": (False, "streaming datasets are not run by ftq: it tokenizes the data once (see tokenized_path)"),
    "eval_on_each_dataset": (False, "ftq evaluates on the eval datasets together; remove the key"),
    "preserve_thinking": (False, "keeping earlier turns' thoughts is not run by this ftq yet; remove the key"),
    "use_badam": (False, f"BAdam {LF_OWN_METHOD}"),
    "use_adam_mini": (False, f"Adam-mini as LLaMA-Factory wires it {LF_OWN_METHOD}"),
    "use_muon": (False, f"Muon as LLaMA-Factory wires it {LF_OWN_METHOD}"),
    "use_dft_loss": (False, f"the DFT loss {LF_OWN_METHOD}"),
    "use_asft_loss": (False, f"the ASFT loss {LF_OWN_METHOD}"),
    "use_eaft_loss": (False, f"the EAFT loss {LF_OWN_METHOD}"),
    "use_llama_pro": (False, f"LLaMA Pro's block expansion {LF_OWN_METHOD}"),
    "use_mca": (False, MEGATRON),
    "use_hyper_parallel": (False, HYPER_PARALLEL),
    "freeze_language_model": (False, MULTIMODAL),
    "compute_accuracy": (False, PREDICT),
    "early_stopping_steps": (None, "early stopping is not run by this ftq yet; set max_steps or num_train_epochs"),
    "use_swanlab": (False, REPORTING),
    "enable_torch_profiler": (False, PROFILER),
    "fp8": (False, "FP8 training is not run by ftq; train in bf16"),
    "fsdp": (None, FSDP),
    "fsdp_config": (None, FSDP),
    "fsdp_min_num_params": (0, FSDP),
    "fsdp_transformer_layer_cls_to_wrap": (None, FSDP),
    "parallelism_config": (None, "accelerate's ParallelismConfig is not run by ftq; use deepspeed for several GPUs"),
    "push_to_hub": (False, NO_NETWORK),
    "do_predict": (False, PREDICT),
    "predict_with_generate": (False, PREDICT),
    "auto_find_batch_size": (
        False,
        "ftq retries a job that runs out of memory itself (oom_retry: it halves the micro-batch and doubles "
        "gradient_accumulation_steps, keeping the effective batch); remove the key",
    ),
    "per_gpu_train_batch_size": (None, "an old transformers name; use per_device_train_batch_size"),
    "per_gpu_eval_batch_size": (None, "an old transformers name; use per_device_eval_batch_size"),
    "adafactor": (False, "an old transformers name; use optim: adafactor"),
    "group_by_length": (False, "an old transformers name; use train_sampling_strategy: group_by_length"),
    "fp16_opt_level": ("O1", "apex is not used by ftq; fp16 is PyTorch's native AMP"),
    "half_precision_backend": ("auto", "ftq uses PyTorch's native AMP"),
    "fp16_backend": ("auto", "ftq uses PyTorch's native AMP"),
    "tpu_num_cores": (None, "ftq runs on NVIDIA GPUs or CPU slots"),
    "torchdynamo": (None, "an old transformers name; use torch_compile_backend"),
}


# transformers 5's names for keys LLaMA-Factory files spell the older way: honoured as the older key.
ALIASES: dict[str, str] = {
    "activation_checkpointing": "gradient_checkpointing",
    "activation_checkpointing_kwargs": "gradient_checkpointing_kwargs",
}


def is_default(key: str, value: Any) -> bool:
    """Whether `value` is what LLaMA-Factory (or transformers) would use anyway, so it asks for nothing."""
    fate = WITHOUT_EFFECT.get(key) or REFUSED.get(key)
    if fate is None:
        return False
    default = fate[0]
    if isinstance(default, bool) or isinstance(value, bool):  # `0` is not `false`, nor `1` `true`
        return value is default
    return bool(value == default)


def without_effect_reason(key: str) -> str | None:
    """Why a key (or, for an honoured key, the value kept under it in `without_effect`) changes nothing."""
    fate = WITHOUT_EFFECT.get(key)
    return fate[1] if fate is not None else PARTLY_WITHOUT_EFFECT.get(key)


def shown(key: str, value: Any) -> str:
    """A value as notes and errors show it: never a credential."""
    return "(hidden)" if key in SECRETS else repr(value)[:200]


def nearest(key: str, known: Iterable[str]) -> str | None:
    """The known key a misspelt one most likely meant ("lora_rnak" -> "lora_rank")."""
    found = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
    return found[0] if found else None
