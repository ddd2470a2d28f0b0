"""Everything about a job that can be checked before a model loads, reported at once (litgpt's validate_args).

The spec itself (worker.spec.job), its model directory (every file in it: inside the
daemon's input dirs, regular, its JSON parsed and its safetensors headers whole),
its datasets (worker.preflight.data_checks: dataset_info.json entries, the first rows of
every file, interleave_probs, tokenized_path), its DeepSpeed config, whether the
daemon allows its remote code, and the test-only FTQ_FAULT: a person fixing a spec
should see every problem in one go, not one per attempt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from worker.preflight.confine import (
    BadFile,
    Roots,
    check_dir,
    input_dirs_from_env,
    output_dirs_from_env,
    read_json_object,
    remote_code_allowed,
    remote_code_refusal,
    show,
)
from worker.preflight.data_checks import data_problems
from worker.preflight.modelfiles import check_model_files
from worker.preflight.requirements import DEEPSPEED_EXTRA, missing, needs
from worker.run.faults import FaultSpecError, faults_from_env
from worker.spec.job import JobSpec
from worker.spec.layout import SPEC_FILE

INSTALL_DEEPSPEED = DEEPSPEED_EXTRA  # the one install command, said at submit too


def read_and_validate(
    run_dir: Path, env: Mapping[str, str] = os.environ, cuda: bool | None = None
) -> tuple[JobSpec | None, list[str]]:
    """The spec and every problem found in it, its model directory, adapters, datasets and FTQ_FAULT.

    With `cuda` (whether this worker sees a CUDA device) also what the job needs
    that this machine lacks: packages, a GPU (worker.preflight.requirements).
    """
    roots = input_dirs_from_env(env)  # None: run by hand, not by a daemon, so nothing to confine to
    path = run_dir / SPEC_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, [f"{path} does not exist"]
    except json.JSONDecodeError as exc:
        return None, [f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"]
    if not isinstance(raw, dict):
        return None, [f"{path} must hold a JSON object"]
    problems: list[str] = []
    spec = None
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"]) or "spec"
            problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    # A job queued while the daemon allowed remote code may run after it was restarted without: ask now.
    if raw.get("trust_remote_code") is True and not remote_code_allowed(env):
        problems.append(remote_code_refusal())
    # The paths are checked from the raw dict so that a bad field elsewhere does not hide a missing model.
    if isinstance(raw.get("model_name_or_path"), str):
        problems += check_model_dir(Path(raw["model_name_or_path"]), roots)
    for field, problem in data_problems(raw, roots, output_dirs_from_env(env)):
        problems.append(f"eval_dataset: {problem}" if field == "eval_dataset" else problem)  # the others name theirs
    if spec is not None:
        for path in spec.adapter_paths:
            problems += check_adapter_dir(Path(path), roots)
        if cuda is not None:
            problems += check_requirements(spec, roots, cuda)
    if isinstance(raw.get("deepspeed"), str) and raw["deepspeed"]:
        problems += check_deepspeed(Path(raw["deepspeed"]), pure_bf16=raw.get("pure_bf16") is True, roots=roots)
    try:
        faults_from_env(env)
    except FaultSpecError as exc:
        problems.append(str(exc))
    return spec, problems


def check_model_dir(path: Path, roots: Roots = None) -> list[str]:
    try:
        check_dir(path, roots)
    except BadFile as exc:
        return [f"model_name_or_path: {exc} (ftq loads local models only)"]
    problems = []
    if not (path / "config.json").is_file():
        problems.append(f"model_name_or_path: {path} has no config.json")
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        problems.append(f"model_name_or_path: {path} has no weights (*.safetensors or pytorch_model*.bin)")
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((path / name).is_file() for name in tokenizer_files):
        problems.append(f"model_name_or_path: {path} has no tokenizer files")
    problems += [f"model_name_or_path: {problem}" for problem in check_model_files(path, roots, parse=True)]
    return problems


def check_adapter_dir(path: Path, roots: Roots = None) -> list[str]:
    """A directory of adapter_name_or_path is a peft adapter inside the input dirs (its files are checked on load)."""
    try:
        check_dir(path, roots)
    except BadFile as exc:
        return [f"adapter_name_or_path: {exc}"]
    if not (path / "adapter_config.json").is_file():
        return [f"adapter_name_or_path: {show(path)} has no adapter_config.json: it is not a peft adapter"]
    return []


def trained_on_adapter(spec: JobSpec, roots: Roots = None) -> dict[str, Any] | None:
    """The adapter_config.json of the adapter the job trains on (the last one, without create_new_adapter)."""
    if not spec.adapter_paths or spec.create_new_adapter or spec.finetuning_type != "lora":
        return None
    try:
        return read_json_object(Path(spec.adapter_paths[-1]) / "adapter_config.json", roots)
    except BadFile:
        return None  # check_adapter_dir has said why


def check_requirements(spec: JobSpec, roots: Roots, cuda: bool) -> list[str]:
    """What the job needs that this worker lacks, in the words the server refuses with at submit."""
    try:
        config: dict[str, Any] | None = read_json_object(Path(spec.model_name_or_path) / "config.json", roots)
    except BadFile:
        config = None  # check_model_dir reports it
    # DeepSpeed's own import is tried by check_deepspeed, which also catches a broken install.
    found = missing([n for n in needs(spec, config) if n.field != "deepspeed"], spec.gpus, cuda=cuda)
    return [f"{field}: {message}" for field, message in found]


def read_deepspeed(path: Path, roots: Roots = None) -> dict[str, Any]:
    """The DeepSpeed config as a dict, read through the confined open; BadFile says why not.

    The worker hands transformers this dict, never the path, so nothing opens the file again unchecked.
    """
    return read_json_object(path, roots)


def check_deepspeed(path: Path, pure_bf16: bool, roots: Roots = None) -> list[str]:
    """The DeepSpeed config is a JSON object, fits the spec, and DeepSpeed itself can be imported."""
    problems = []
    try:
        config = read_deepspeed(path, roots)
    except BadFile as exc:
        problems.append(f"deepspeed: {exc}")
    else:
        if pure_bf16 and _zero_stage(config) == 3:
            problems.append(
                "pure_bf16 is incompatible with DeepSpeed ZeRO-3 (as in LLaMA-Factory); "
                "use a ZeRO-0/2 config or drop pure_bf16"
            )
    try:
        import deepspeed  # noqa: F401 - the optional extra; transformers imports it again when it needs it
    except ImportError as exc:
        problems.append(
            f"deepspeed: the spec names a DeepSpeed config but DeepSpeed is not installed ({exc}); "
            f"install the extra with {INSTALL_DEEPSPEED}"
        )
    except Exception as exc:  # a broken install fails in many ways (CUDA toolkit, ops): say so now
        problems.append(
            f"deepspeed: importing DeepSpeed failed ({type(exc).__name__}: {exc}); "
            f"reinstall it with {INSTALL_DEEPSPEED}"
        )
    return problems


def _zero_stage(config: dict[str, Any]) -> Any:
    zero = config.get("zero_optimization")
    return zero.get("stage") if isinstance(zero, dict) else None
