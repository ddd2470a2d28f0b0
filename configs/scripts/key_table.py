"""Print the README's table of LLaMA-Factory and transformers keys, from the catalog the daemon itself uses.

    python -m configs.scripts.key_table

tests/unit/test_key_fates.py checks that the README holds exactly this output, so the
table cannot drift from what ftq does.
"""

from __future__ import annotations

from collections import defaultdict

from worker.spec.batching import BatchingFields
from worker.spec.job import JobSpec
from worker.spec.key_fates import ALIASES, REFUSED, WITHOUT_EFFECT
from worker.spec.method_keys import MethodFields
from worker.spec.outputs import OutputFields
from worker.spec.passed import PASSED_KEYS

FTQ_OWN = ("name", "gpus", "priority", "oom_retry", "node_retry", "gpu_ids", "without_effect")
# The method keys and what each group does, in the README's words.
HONOURED_GROUPS = {
    "freeze": "last (or first, when negative) n layers train, as LLaMA-Factory picks them",
    "LoRA and its variants": "peft's LoRA: DoRA, rsLoRA, PiSSA, LoRA+, extra trained modules, existing adapters",
    "OFT": "peft's OFT",
    "QLoRA": "bitsandbytes 4 / 8 bit, GPU only (refused for a CPU slot)",
    "attention and kernels": "transformers' attention implementation, checkpointing, upcasting, Liger (GPU)",
    "GaLore, APOLLO": "transformers' optimizers (needs galore-torch / apollo-torch)",
}


def key_list(keys: list[str]) -> str:
    return ", ".join(f"`{key}`" for key in keys)


def table() -> str:
    method = [k for k in MethodFields.model_fields]
    batching = [k for k in BatchingFields.model_fields]
    outputs = [k for k in OutputFields.model_fields]
    mine = set(PASSED_KEYS) | set(FTQ_OWN) | set(method) | set(batching) | set(outputs)
    honoured = [k for k in JobSpec.model_fields if k not in mine]
    lines = ["| fate | keys | why |", "| --- | --- | --- |"]
    lines.append(f"| honoured | {key_list(honoured)} | what LLaMA-Factory means by them |")
    lines.append(
        f"| honoured (method) | {key_list(method)} | {'; '.join(f'{g}: {w}' for g, w in HONOURED_GROUPS.items())} |"
    )
    lines.append(
        f"| honoured (batching) | {key_list(batching)} | ftq's padding-free rows, micro-batch and loss kernel, on by "
        "default and exact; LLaMA-Factory's packing, opt-in (see Batching) |"
    )
    lines.append(
        f"| honoured (outputs) | {key_list(outputs)} | `plot_loss`: `training_loss.png` (and "
        "`training_eval_loss.png` when the run evaluated) beside the result, needs `ftq[plot]`; `report_to: "
        "tensorboard`: TensorBoard event files in the run dir, needs `ftq[tensorboard]`; report_to's other "
        "integrations are accepted without effect (in `notes`) |"
    )
    lines.append(
        f"| passed to `TrainingArguments` as it is | {key_list(list(PASSED_KEYS))} | transformers' own; typed, "
        "so a bad value is a 422 at submit |"
    )
    lines.append(
        f"| honoured, under its older name | {key_list(list(ALIASES))} | transformers 5's names for "
        f"{key_list(list(ALIASES.values()))} |"
    )
    for fate, catalog in (("accepted without effect (in `notes`)", WITHOUT_EFFECT), ("refused at submit", REFUSED)):
        by_reason: dict[str, list[str]] = defaultdict(list)
        for key, (_, why) in catalog.items():
            by_reason[why].append(key)
        for why, keys in by_reason.items():
            lines.append(f"| {fate} | {key_list(keys)} | {why} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
