"""A job's public notes: what ftq did with the keys of its spec that the spec alone does not show.

Keys accepted without effect (worker.spec.key_fates) are listed with the reason, so
nothing a file asked for is dropped silently; so are the places where ftq's
behaviour differs from LLaMA-Factory's for the same file. Pure: from the stored
spec only, computed when the job is read.
"""

from __future__ import annotations

from typing import Any

from worker.spec.key_fates import shown, without_effect_reason


def spec_notes(spec: dict[str, Any]) -> list[str]:
    notes = [
        f"{key}: {shown(key, value)} is accepted without effect: {without_effect_reason(key)}"
        for key, value in (spec.get("without_effect") or {}).items()
        if without_effect_reason(key) is not None
    ]
    what = "adapter" if spec.get("finetuning_type", "lora") in ("lora", "oft") else "model"
    if spec.get("output_dir"):
        notes.append(
            f"output_dir: the final {what} is written to {spec['output_dir']} when training succeeds "
            "(and kept in the job's run dir)"
        )
    if not spec.get("template"):
        notes.append("template is unset: prompts are rendered with the tokenizer's own chat template")
    elif not spec.get("gradient_checkpointing"):
        notes.append(
            "gradient_checkpointing is off (ftq's default), where LLaMA-Factory turns it on unless "
            "disable_gradient_checkpointing: true; set gradient_checkpointing: true for LLaMA-Factory's memory use"
        )
    if spec.get("packing") or spec.get("neat_packing"):
        how = (
            "attention stays inside each sample" if spec.get("neat_packing") else "a row's samples attend to each other"
        )
        notes.append(
            f"{'neat_packing' if spec.get('neat_packing') else 'packing'}: samples are packed into rows of up to "
            f"cutoff_len tokens ({how}), so a step sees more samples than per_device_train_batch_size x "
            "gradient_accumulation_steps; compare it with packed runs only"
        )
    return notes
