"""Which checkpoint an attempt resumes from, decided before anything heavy loads.

RUN_DIR/checkpoints is, under the daemon, a link to a directory shared by every
attempt of the job, so a requeued or retried attempt finds what the ones before
it saved. transformers' Trainer restores everything from a `checkpoint-N`
directory (weights or adapter, optimizer, scheduler, RNG, data position); this
module only decides which one, cheaply and without torch, because the `start`
record must say `resumed_from_step` before the model loads.

A checkpoint is usable when it was saved whole (transformers writes
trainer_state.json last), its files are not cut short, and it holds what this
attempt can load: an adapter of the same kind and rank for LoRA or OFT, full
weights for full and freeze fine-tuning, trained the same way (the method
ftq_checkpoint.json records: a freeze checkpoint's optimizer state fits neither
a full job nor one that trains other layers), and the optimizer state in the
form this attempt reads (optimizer.pt without DeepSpeed, DeepSpeed's own
`global_step*` directory with it, saved by as many ranks when ZeRO partitioned it). The newest usable one
wins; newer ones that are not usable are moved to checkpoints/unusable/ with a
note saying why, so that "the newest checkpoint" always means "how far the job
got" for the attempts after this one.

Beside the Trainer's files each checkpoint gets ftq_checkpoint.json: the
micro-batch, accumulation, ranks and example count it was trained with, which
trainer_state.json does not keep, so the next attempt can say whether the data
position and total steps carry over.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")  # transformers' PREFIX_CHECKPOINT_DIR-<global step>
TRAINER_STATE = "trainer_state.json"  # written last by the Trainer: its presence means the save completed
SHAPE_FILE = "ftq_checkpoint.json"
UNUSABLE_DIR = "unusable"
UNUSABLE_MARK = "ftq_unusable.txt"  # left in a checkpoint that passed the checks but failed to load
_MAX_SAFETENSORS_HEADER = 100 << 20


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int


@dataclass(frozen=True)
class Expected:
    """What this attempt can load."""

    finetuning_type: str  # "lora", "oft", "freeze" or "full"
    lora_rank: int  # the rank a LoRA checkpoint's adapter must have
    deepspeed: bool
    world_size: int
    # Other adapter_config.json values the checkpoint's adapter must have (use_dora; OFT's r and block size).
    adapter: tuple[tuple[str, Any], ...] = ()
    # How the weights train (worker.spec.methods.describe_method), compared with what ftq_checkpoint.json recorded.
    method: str | None = None


@dataclass(frozen=True)
class TrainingShape:
    """How the steps of a checkpoint were made: what decides the data position and the number of steps."""

    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    world_size: int
    train_examples: int | None = None
    cutoff_len: int | None = None
    gradient_checkpointing: bool | None = None
    deepspeed: bool | None = None
    method: str | None = (
        None  # worker.spec.methods.describe_method: what trained, and so what the optimizer state holds
    )

    @property
    def effective_batch(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.world_size

    def describe(self) -> str:
        ranks = f" x {self.world_size} ranks" if self.world_size != 1 else ""
        batch, accumulation = self.per_device_train_batch_size, self.gradient_accumulation_steps
        return f"micro-batch {batch} x accumulation {accumulation}{ranks}"


@dataclass(frozen=True)
class ResumePlan:
    """The checkpoint to resume from (None: start fresh), and what was passed over on the way to it."""

    checkpoint: Checkpoint | None
    rejected: tuple[tuple[Checkpoint, str], ...] = ()

    @property
    def found_any(self) -> bool:
        return self.checkpoint is not None or bool(self.rejected)


# ---- finding and checking -----------------------------------------------------------------------------------------


def list_checkpoints(directory: str | Path) -> list[Checkpoint]:
    """The checkpoint-N directories in `directory` (which may be a link), newest (highest N) first."""
    directory = Path(directory)
    try:
        entries = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [
        Checkpoint(entry, int(match.group(1)))
        for entry in entries
        if (match := CHECKPOINT_NAME.match(entry.name)) and entry.is_dir()
    ]
    return sorted(found, key=lambda c: c.step, reverse=True)


def plan_resume(
    directory: str | Path, expected: Expected, below: int | None = None, set_aside: bool = False
) -> ResumePlan:
    """The newest usable checkpoint (with a step below `below`, when given) and the newer ones that are not.

    With `set_aside` (one process of a run: rank 0), the unusable ones are moved
    to checkpoints/unusable/. Other ranks may be checking the same directories at
    that moment; a checkpoint they find gone is unusable to them as well, so
    every rank still picks the same one.
    """
    rejected: list[tuple[Checkpoint, str]] = []
    for checkpoint in list_checkpoints(directory):
        if below is not None and checkpoint.step >= below:
            continue
        why = check_checkpoint(checkpoint, expected)
        if why is None:
            return ResumePlan(checkpoint, tuple(rejected))
        rejected.append((checkpoint, why))
        if set_aside:
            move_aside(checkpoint, why)
    return ResumePlan(None, tuple(rejected))


def check_checkpoint(checkpoint: Checkpoint, expected: Expected) -> str | None:
    """Why this checkpoint cannot be resumed from by this attempt, or None when it can."""
    path = checkpoint.path
    try:
        mark = path / UNUSABLE_MARK
        if mark.is_file():
            return f"an earlier attempt could not load it: {mark.read_text(encoding='utf-8', errors='replace').strip()}"
        state = _read_json(path / TRAINER_STATE)
        if state is None:
            return f"incomplete: it has no readable {TRAINER_STATE} (its save was cut short)"
        if state.get("global_step") != checkpoint.step:
            return f"{TRAINER_STATE} says global_step {state.get('global_step')!r}, not {checkpoint.step}"
        return (
            _check_method(path, expected)
            or _check_optimizer(path, expected)
            or (None if expected.deepspeed else _check_weights(path, expected))
        )
    except OSError as exc:  # gone under us (another rank set it aside), unreadable, ...
        return f"cannot be read: {exc}"


PEFT_TYPES = {"lora": "LORA", "oft": "OFT"}  # finetuning_type -> peft_type in adapter_config.json
ADAPTER_NAMES = {"LORA": "a LoRA", "OFT": "an OFT"}


def _check_method(path: Path, expected: Expected) -> str | None:
    """Trained another way (freeze for a full job, other layers, another optimizer): its state does not fit."""
    saved = read_shape(path)
    if expected.method is None or saved is None or saved.method is None or saved.method == expected.method:
        return None
    return f"it was trained as {saved.method!r}, but this job trains {expected.method!r}"


def _check_weights(path: Path, expected: Expected) -> str | None:
    has_adapter = (path / "adapter_config.json").is_file()
    wanted = PEFT_TYPES.get(expected.finetuning_type)
    if wanted is not None:
        name = ADAPTER_NAMES[wanted]
        if not has_adapter:
            if _has_full_weights(path):
                return f"it holds full model weights, but this job trains {name} adapter"
            return "it has no adapter_config.json"
        config = _read_json(path / "adapter_config.json")
        if config is None:
            return "its adapter_config.json is not readable"
        if config.get("peft_type", wanted) != wanted:
            kind = config.get("peft_type")
            return f"it holds {ADAPTER_NAMES.get(kind, f'a {kind}')} adapter, but this job trains {name} adapter"
        if wanted == "LORA" and config.get("r") != expected.lora_rank:
            return f"its adapter has rank {config.get('r')!r}, but this job's lora_rank is {expected.lora_rank}"
        for key, value in expected.adapter:
            if key in config and config[key] != value:
                return f"its adapter has {key} {config[key]!r}, but this job's is {value!r}"
        return _check_weight_files(path, ("adapter_model",))
    if has_adapter and not _has_full_weights(path):
        kind = (_read_json(path / "adapter_config.json") or {}).get("peft_type", "LORA")
        job = "fine-tunes the full model" if expected.finetuning_type == "full" else "trains whole layers (freeze)"
        return f"it holds {ADAPTER_NAMES.get(kind, f'a {kind}')} adapter, but this job {job}"
    return _check_weight_files(path, ("model", "pytorch_model"))


def _has_full_weights(path: Path) -> bool:
    names = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    return any((path / name).is_file() for name in names)


def _check_weight_files(path: Path, stems: tuple[str, ...]) -> str | None:
    """The first weights found under `stems` (.safetensors or .bin, whole or sharded with an index) are whole."""
    for stem in stems:
        for suffix in (".safetensors", ".bin"):
            single, index_file = path / f"{stem}{suffix}", path / f"{stem}{suffix}.index.json"
            if index_file.is_file():
                mapping = _read_json(index_file)
                if mapping is None or not isinstance(mapping.get("weight_map"), dict):
                    return f"{index_file.name} is not a readable index"
                shards = [path / name for name in sorted(set(mapping["weight_map"].values()))]
            elif single.is_file():
                shards = [single]
            else:
                continue
            for shard in shards:
                why = check_safetensors(shard) if suffix == ".safetensors" else check_torch_file(shard)
                if why:
                    return why
            return None
    return f"it has no weights ({' or '.join(stems)})"


def _check_optimizer(path: Path, expected: Expected) -> str | None:
    deepspeed_tags = [d for d in path.glob("global_step*") if d.is_dir()]
    if expected.deepspeed:
        if not deepspeed_tags:
            if (path / "optimizer.pt").is_file():
                return "it was saved without DeepSpeed; this attempt runs with DeepSpeed, which reads its own format"
            return "it has no DeepSpeed state (global_step*)"
        latest = path / "latest"
        tag = path / latest.read_text(encoding="utf-8").strip() if latest.is_file() else max(deepspeed_tags)
        if not tag.is_dir():
            return f"DeepSpeed's 'latest' names {tag.name}, which is not there"
        partitions = len(list(tag.glob("*optim_states.pt")))
        if partitions and partitions != expected.world_size:
            return (
                f"DeepSpeed partitioned its optimizer state over {partitions} ranks; "
                f"this attempt has {expected.world_size}"
            )
        return None
    if not (path / "optimizer.pt").is_file():
        if deepspeed_tags:
            return "it was saved by DeepSpeed; this attempt runs without DeepSpeed and cannot read that format"
        return "it has no optimizer.pt"
    for name in ("optimizer.pt", "scheduler.pt"):
        why = check_torch_file(path / name)
        if why:
            return why
    return None


def check_safetensors(path: Path) -> str | None:
    """None when the file's header parses and the file is as long as the header says: not cut short."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is cut short"
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, _MAX_SAFETENSORS_HEADER):
                return f"{path.name} is cut short or not safetensors"
            header = json.loads(f.read(length))
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (ValueError, UnicodeDecodeError):
        return f"{path.name} has an unreadable header"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if 8 + length + max(ends, default=0) != size:
        return f"{path.name} is {size} bytes, its header says {8 + length + max(ends, default=0)}: cut short"
    return None


def check_torch_file(path: Path) -> str | None:
    """None when a torch.save file is a whole zip archive (its directory, at the end, is readable)."""
    if not path.is_file():
        return f"{path.name} is missing"
    try:
        with zipfile.ZipFile(path):
            return None
    except (zipfile.BadZipFile, OSError, ValueError):
        return f"{path.name} is cut short or not a torch file"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


# ---- what the run does with them ----------------------------------------------------------------------------------


def move_aside(checkpoint: Checkpoint, why: str) -> Path | None:
    """Move an unusable checkpoint to unusable/ beside it, with a note; None when it could not be moved."""
    target_dir = checkpoint.path.parent / UNUSABLE_DIR
    try:
        target_dir.mkdir(exist_ok=True)
        target = target_dir / checkpoint.path.name
        n = 1
        while target.exists():
            n += 1
            target = target_dir / f"{checkpoint.path.name}.{n}"
        os.replace(checkpoint.path, target)
        (target / "why-unusable.txt").write_text(why + "\n", encoding="utf-8")
    except OSError as exc:
        log.warning("could not move %s aside: %s", checkpoint.path, exc)
        return None
    log.warning("moved %s to %s: %s", checkpoint.path.name, target, why)
    return target


def mark_unusable(checkpoint: Checkpoint, why: str) -> None:
    """Note in a checkpoint that it failed to load, so that no later attempt tries it again."""
    try:
        (checkpoint.path / UNUSABLE_MARK).write_text(why + "\n", encoding="utf-8")
    except OSError as exc:
        log.warning("could not mark %s unusable: %s", checkpoint.path, exc)


def write_shape(checkpoint_dir: str | Path, shape: TrainingShape) -> None:
    """Record how a checkpoint's steps were made (written after the Trainer's own files)."""
    path = Path(checkpoint_dir) / SHAPE_FILE
    tmp = path.with_name(f".{SHAPE_FILE}.tmp")
    tmp.write_text(json.dumps(asdict(shape)), encoding="utf-8")
    os.replace(tmp, path)


def read_shape(checkpoint_dir: str | Path) -> TrainingShape | None:
    data = _read_json(Path(checkpoint_dir) / SHAPE_FILE)
    if data is None:
        return None
    try:
        return TrainingShape(**{k: v for k, v in data.items() if k in TrainingShape.__dataclass_fields__})
    except TypeError:
        return None


def compare_shapes(saved: TrainingShape | None, now: TrainingShape, step: int) -> tuple[str, bool]:
    """A sentence on whether the data position and total steps carry over from `saved` to `now`; True if they do.

    transformers skips `step x accumulation` micro-batches of the new size on
    resume (and only warns that the micro-batch differs), which is the same
    data when the effective batch is the same: the sampler's order depends on
    the seed and the epoch, not on the batch size.
    """
    if saved is None:
        return f"the checkpoint does not say how its steps were made; resuming after step {step} as it is", True
    if saved.effective_batch != now.effective_batch:
        return (
            f"the effective batch changed from {saved.effective_batch} ({saved.describe()}) to "
            f"{now.effective_batch} ({now.describe()}): the learning-rate schedule resumes at step {step}, but the "
            f"data position is approximate ({step * now.effective_batch} examples are skipped, "
            f"{step * saved.effective_batch} were trained on) and an epoch-based run changes its total steps"
        ), False
    if None not in (saved.train_examples, now.train_examples) and saved.train_examples != now.train_examples:
        return (
            f"the training set has {now.train_examples} examples where the checkpoint's had {saved.train_examples} "
            f"(cutoff_len {saved.cutoff_len} -> {now.cutoff_len} keeps a different number): the data position is "
            "approximate"
        ), False
    same = "the same" if saved == now else f"{saved.describe()} before, {now.describe()} now: the same"
    return f"{same} effective batch of {now.effective_batch}, so the data position and total steps carry over", True
