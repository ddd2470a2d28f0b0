"""The job spec: the one contract between the daemon and a worker.

Field names are LLaMA-Factory's training-YAML keys wherever it has one, so a file
written for `llamafactory-cli train` can be submitted as it is. ftq's own fields
(`name`, `gpus`, `priority`) sit beside them. A key nobody knows is an error that
names it; a key LLaMA-Factory knows but ftq does not run yet is an error that
says so, never silently dropped.

This module is pure (pydantic only): the server validates with it, the worker
reads `RUN_DIR/spec.json` with it.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

# The exit codes (worker.spec.exits) and the run-dir layout (worker.spec.layout) live apart (no pydantic there: the
# start gate and the benchmarks' stand-in workers need them before, or without, the slow imports); the spec
# re-exports them.
from worker.spec.job_fields import JobFields
from worker.spec.key_fates import ALIASES, PARTLY_WITHOUT_EFFECT, REFUSED, SECRETS, WITHOUT_EFFECT, is_default, nearest
from worker.spec.methods import method_problems
from worker.spec.outputs import split_report_to
from worker.spec.passed import scheduler_problems
from worker.templates.render import TEMPLATE_NAMES
from worker.templates.tools import TOOL_FORMAT_NAMES

OTHER_STAGES = ("pt", "rm", "ppo", "dpo", "kto")
# How deep a value of the spec may nest (a DeepSpeed config nests 3 levels, lr_scheduler_kwargs 1): deeper is refused
# at submit, naming its key, before anything recurses into it (pydantic's JSON writer stops at a few hundred levels).
MAX_DEPTH = 32


# The fields are worker.spec.job_fields'; here, the checks across them. The docstring is the API's description.
class JobSpec(JobFields):
    """What to fine-tune, on what, how, and with how many GPUs."""

    @model_validator(mode="wrap")
    @classmethod
    def _sort_keys(cls, data: Any, handler: Any) -> Any:
        """Give every key its fate (worker.spec.key_fates) and report every problem together, each naming its key."""
        if not isinstance(data, dict):
            return handler(data)
        kept, without_effect, problems = sort_keys(data, set(cls.model_fields))
        try:
            spec = handler({**kept, "without_effect": without_effect} if without_effect else kept)
            problems += [
                {"type": PydanticCustomError("combination", why), "loc": (field,), "input": data.get(field)}
                for field, why in spec.combination_problems()
            ]
        except ValidationError as exc:
            refused = {problem["loc"][0] for problem in problems}  # a refused key is not "missing" besides
            problems += [
                {"type": PydanticCustomError(e["type"], e["msg"]), "loc": e["loc"], "input": e["input"]}
                for e in exc.errors(include_url=False)
                if not (e["type"] == "missing" and e["loc"][:1] and e["loc"][0] in refused)
            ]
            spec = None
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return spec

    @model_validator(mode="before")
    @classmethod
    def _gpus_follow_gpu_ids(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("gpu_ids"), list) and "gpus" not in data:
            data = {**data, "gpus": len(data["gpu_ids"])}
        if isinstance(data, dict) and isinstance(data.get("oom_retry"), bool):
            data = {**data, "oom_retry": 3 if data["oom_retry"] else 0}
        # LLaMA-Factory's switch, said once as the field everything else reads (the OOM retry turns it on there).
        if isinstance(data, dict) and isinstance(data.get("disable_gradient_checkpointing"), bool):
            wanted = not data["disable_gradient_checkpointing"]
            if data.get("gradient_checkpointing", wanted) is wanted:
                data = {k: v for k, v in data.items() if k != "disable_gradient_checkpointing"}
                data["gradient_checkpointing"] = wanted
        return data

    def combination_problems(self) -> list[tuple[str, str]]:
        """(field, why) for each combination of keys that cannot work together, every one of them at once."""
        found: list[tuple[str, str]] = []
        if self.gpu_ids is not None:
            if len(set(self.gpu_ids)) != len(self.gpu_ids) or min(self.gpu_ids) < 0:
                found.append(("gpu_ids", f"gpu_ids {self.gpu_ids} must be distinct indices >= 0"))
            if self.gpus != len(self.gpu_ids):
                found.append(
                    ("gpus", f"gpus is {self.gpus} but gpu_ids names {len(self.gpu_ids)}; drop gpus or match it")
                )
        if self.pure_bf16 and self.fp16:
            found.append(("pure_bf16", "pure_bf16 and fp16 are both true; choose one"))
        if self.deepspeed is not None and self.gpus == 0:
            found.append(("deepspeed", "deepspeed needs at least one GPU; set gpus: 1 or more, or remove deepspeed"))
        if self.bf16 and self.fp16:
            found.append(("fp16", "bf16 and fp16 are both true; choose one mixed-precision mode"))
        if self.val_size >= 1 and self.val_size != int(self.val_size):
            found.append(("val_size", "val_size must be a fraction below 1 or a whole count of examples"))
        if self.eval_dataset is not None and self.val_size > 0:
            found.append(("eval_dataset", "eval_dataset and val_size are both set; evaluate on one or the other"))
        if self.eval_strategy != "no" and self.val_size == 0 and self.eval_dataset is None:
            why = f"eval_strategy is {self.eval_strategy!r} but there is no eval data; set val_size or eval_dataset"
            found.append(("eval_strategy", why))
        if self.disable_gradient_checkpointing is not None:
            why = "disable_gradient_checkpointing and gradient_checkpointing contradict each other; keep one of them"
            found.append(("disable_gradient_checkpointing", why))
        if self.interleave_probs is not None and self.mix_strategy == "concat":
            found.append(
                ("interleave_probs", "interleave_probs needs mix_strategy interleave_under or interleave_over")
            )
        if self.template is not None and self.template not in TEMPLATE_NAMES:
            why = (
                f"{self.template!r} is not a template ftq has; it has: {', '.join(TEMPLATE_NAMES)} (or leave it unset "
            )
            found.append(("template", why + "to use the tokenizer's own chat template)"))
        if self.tool_format is not None and self.tool_format not in TOOL_FORMAT_NAMES:
            found.append(
                ("tool_format", f"{self.tool_format!r} is not supported; ftq has: {', '.join(TOOL_FORMAT_NAMES)}")
            )
        found += [
            ("lr_scheduler_kwargs", why) for why in scheduler_problems(self.lr_scheduler_type, self.lr_scheduler_kwargs)
        ]
        fields = set(type(self).model_fields)
        found += [(_field_named(problem, fields), problem) for problem in method_problems(self)]
        return found


def _field_named(problem: str, fields: set[str]) -> str:
    """The key a sentence is about: its first word when that is a key ("use_dora applies to LoRA only")."""
    first = problem.split()[0].rstrip(":,") if problem.split() else ""
    return first if first in fields else "spec"


def sort_keys(data: dict[str, Any], fields: set[str]) -> tuple[dict[str, Any], dict[str, Any], list[InitErrorDetails]]:
    """(keys for the model's fields, keys accepted without effect, problems), per worker.spec.key_fates."""
    kept: dict[str, Any] = {}
    problems: list[InitErrorDetails] = []
    held = data.get("without_effect")
    without_effect: dict[str, Any] = dict(held) if isinstance(held, dict) else {}

    def refuse(key: str, why: str, shown: Any = None) -> None:
        value = data[key] if shown is None else shown
        problems.append({"type": PydanticCustomError("refused", why), "loc": (key,), "input": value})

    for key, value in data.items():
        if (why := value_problem(value)) is not None:  # the value itself is not shown back: it may be 900 deep
            refuse(key, f"{key} {why}", shown="(not shown)")
        elif key == "without_effect" and not isinstance(value, dict | None):
            refuse(key, f"without_effect must be a mapping of key: value, not {type(value).__name__}; remove it")
        elif key == "without_effect":
            unknown = [k for k in without_effect if k not in WITHOUT_EFFECT and k not in PARTLY_WITHOUT_EFFECT]
            if unknown:
                refuse(key, f"holds {', '.join(map(repr, unknown[:5]))}, which are not keys ftq accepts without effect")
        elif key == "stage" and value in OTHER_STAGES:
            refuse(key, f"stage {value!r} is not run by ftq: it runs supervised fine-tuning (stage: sft) only")
        elif key == "report_to":  # tensorboard is honoured; any other integration is accepted without effect
            ours, rest = split_report_to(value)
            if ours is not None:
                kept[key] = ours
            if rest is not None:
                without_effect[key] = rest
        elif key in ALIASES:
            if ALIASES[key] in data and data[ALIASES[key]] != value:
                refuse(key, f"is transformers' new name for {ALIASES[key]}, which says otherwise; keep one of them")
            else:
                kept[ALIASES[key]] = value
        elif key in fields:
            kept[key] = value
        elif key in WITHOUT_EFFECT:
            if not is_default(key, value):
                without_effect[key] = "(hidden)" if key in SECRETS else value
        elif key in REFUSED:
            if not is_default(key, value):
                refuse(key, REFUSED[key][1])
        else:
            known = fields | set(WITHOUT_EFFECT) | set(REFUSED) | set(ALIASES)
            guess = nearest(key, known)
            hint = f"; did you mean {guess}?" if guess else "; remove it (see the README's table of keys)"
            refuse(key, f"{key!r} is not a key ftq or LLaMA-Factory knows{hint}")
    return kept, without_effect, problems


def value_problem(value: Any) -> str | None:
    """Why a value cannot be kept as JSON: nested deeper than MAX_DEPTH, or a number that is not finite
    (JSON has no Infinity or NaN; Python's parser takes them, and they would be stored as null). Walked without
    recursion, so that no depth can exhaust the stack."""
    todo: list[tuple[Any, int, str]] = [(value, 0, "")]
    while todo:
        current, depth, where = todo.pop()
        at = f" (at {where[1:]})" if where else ""
        if isinstance(current, float) and not math.isfinite(current):
            return f"holds {current}{at}, which is not a finite number; give a finite number"
        if isinstance(current, dict | list):
            if depth >= MAX_DEPTH:
                return f"nests deeper than {MAX_DEPTH} levels{at}; flatten it"
            items = current.items() if isinstance(current, dict) else enumerate(current)
            todo += [(item, depth + 1, f"{where}.{name}") for name, item in items]
    return None
