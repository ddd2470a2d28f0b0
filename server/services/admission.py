"""Admission: the memory a spec needs, whether this machine can ever run it, where it would fit now,
and what would make it fit.

The estimate comes from the model's config.json alone (no weights read); the
decision from the GPUs the probe sees. A job that can never fit is refused at
submit with the numbers and the changes that would make it fit, instead of
waiting in the queue forever.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from scheduler.gpus.types import GpuInfo
from scheduler.policy.estimate import MemoryEstimate, estimate_for_spec
from scheduler.policy.gpu_pool import gang_shape
from scheduler.policy.placement import Placement, QueuedJob, place
from scheduler.policy.sizing import estimate_with, need_of_stored
from server.services.errors import field_error
from server.services.paths import SpecFiles, read_spec_files
from worker.preflight.confine import remote_code_refusal
from worker.preflight.requirements import missing, needs
from worker.spec.job import JobSpec
from worker.spec.units import GIB

Z3 = {"zero_optimization": {"stage": 3}}
Z3_CONFIG = "configs/deepspeed/ds_z3_config.json"
# worker.spec.batching's switches that save memory without changing what is computed, the larger saving first.
BATCHING_SWITCHES = ("fused_cross_entropy", "padding_free")


@dataclass
class Assessment:
    need_bytes: int = 0  # per GPU, estimate only (the margin is added at placement)
    estimate: dict[str, Any] | None = None
    largest_offer: int | None = None  # memory of the best GPU set of the job's size, per GPU
    fits_ever: bool = True
    fits_now: Placement | None = None
    suggestions: list[str] = field(default_factory=list)


def estimate(spec: JobSpec, files: SpecFiles | None = None) -> MemoryEstimate | None:
    """The spec's per-GPU estimate; None when the model's config cannot be read as a transformer's.

    `files`: the JSON read when the spec was checked; without it (a stored spec) the files are read again.
    """
    return estimate_with(files if files is not None else read_spec_files(spec), spec)


def estimate_need(spec: dict[str, Any]) -> int:
    """The per-GPU estimate of a stored spec, its files read again (0 when it cannot be made)."""
    return need_of_stored(spec, read_spec_files)


def largest_offer(spec: JobSpec, gpus: list[GpuInfo]) -> int | None:
    """Per-GPU memory of the best set of `spec.gpus` healthy GPUs there are (pinned: those), on one node, or
    for a job larger than every node of a cluster, split evenly over nodes as placement splits it (gang_shape).
    None when no set serves it."""
    by_node: dict[str, dict[int, GpuInfo]] = {}
    for g in gpus:
        if g.healthy and g.memory_total is not None:
            by_node.setdefault(g.node, {})[g.index] = g
    if spec.gpu_ids is not None:
        ids = spec.gpu_ids
        pinned = [min(n[i].memory_total or 0 for i in ids) for n in by_node.values() if all(i in n for i in ids)]
        return max(pinned, default=None)
    totals = [sorted((g.memory_total or 0 for g in node.values()), reverse=True) for node in by_node.values()]
    one_node = [t[spec.gpus - 1] for t in totals if 0 < spec.gpus <= len(t)]
    if one_node:
        return max(one_node)
    shape = gang_shape(spec.gpus, [len(t) for t in totals]) if spec.gpus > 0 else None
    if shape is None:
        return None
    nodes, each = shape
    return sorted((t[each - 1] for t in totals if len(t) >= each), reverse=True)[nodes - 1]


def servable_gpus(asked: int, gpus: list[GpuInfo]) -> int | None:
    """The largest GPU count up to `asked` that one node or an even split over nodes can serve."""
    sizes = list(Counter(g.node for g in gpus if g.healthy).values())
    for n in range(asked, 0, -1):
        if any(size >= n for size in sizes) or gang_shape(n, sizes) is not None:
            return n
    return None


def assess(
    spec: JobSpec,
    gpus: list[GpuInfo],
    leased: set[str],
    margin: int,
    topology: Any = None,
    files: SpecFiles | None = None,
) -> Assessment:
    if spec.gpus == 0:
        return Assessment()
    files = files if files is not None else read_spec_files(spec)
    found = estimate(spec, files)
    need = found.per_gpu if found is not None else 0
    offer = largest_offer(spec, gpus)
    result = Assessment(
        need_bytes=need,
        estimate=found.to_dict() if found is not None else None,
        largest_offer=offer,
        fits_ever=offer is not None and need + margin <= offer,
    )
    job = QueuedJob(0, 0, 0, spec.gpus, need, tuple(spec.gpu_ids) if spec.gpu_ids else None)
    placed = place([job], gpus, leased, 0, margin, topology)
    result.fits_now = placed[0] if placed else None
    if not result.fits_ever and found is not None:
        result.suggestions = suggestions(spec, gpus, margin, files=files)
    return result


def suggestions(
    spec: JobSpec, gpus: list[GpuInfo], margin: int, most: int = 4, files: SpecFiles | None = None
) -> list[str]:
    """Changes that would make the job fit on this machine, each with the estimate it would have.

    First the batching switches the spec turned off (padding_free, fused_cross_entropy: they
    change no result, only memory), then single levers (gradient checkpointing, LoRA), then the
    largest micro-batch that fits (gradient accumulation keeps the effective batch), alone and
    with checkpointing, then ZeRO-3 over more GPUs. Every variant goes through estimate_for_spec,
    so each is counted in the batching modes the job would run in.
    """
    fit = _Variants(spec, gpus, margin, files if files is not None else read_spec_files(spec))
    checkpointing = {} if spec.gradient_checkpointing else {"gradient_checkpointing": True}
    found = [
        *fit.batching_switches(),
        *fit.single_levers(checkpointing),
        *fit.smaller_batches(checkpointing),
        *fit.more_gpus(checkpointing),
    ]
    return [_said(changes, need, extra) for changes, need, extra in found[:most]]


Suggestion = tuple[dict[str, Any], int, str]  # the changes, the need per GPU with them, what else to do


@dataclass(frozen=True)
class _Variants:
    """Variants of a spec that would fit this machine, each found by estimating it (suggestions' stages)."""

    spec: JobSpec
    gpus: list[GpuInfo]
    margin: int
    files: SpecFiles

    def need_if(self, changes: dict[str, Any], ds_config: dict[str, Any] | None = None) -> int | None:
        """The per-GPU need of the spec with `changes`, when it fits the best GPUs here; else None."""
        variant = self.spec.model_copy(update=changes)
        offer = largest_offer(variant, self.gpus)
        try:
            config = self.files.model_config or {}
            need = estimate_for_spec(config, variant, ds_config or self.files.deepspeed_config).per_gpu
        except ValueError:
            return None
        return need if offer is not None and need + self.margin <= offer else None

    def batching_switches(self) -> list[Suggestion]:
        """The switches the spec turned off: each alone (the larger saving first), then both when neither alone is
        enough; the first that fits."""
        switched_off = [key for key in BATCHING_SWITCHES if not getattr(self.spec, key)]
        for keys in [[key] for key in switched_off] + ([switched_off] if len(switched_off) > 1 else []):
            changes = dict.fromkeys(keys, True)
            need = self.need_if(changes)
            if need is not None:
                return [(changes, need, "")]
        return []

    def single_levers(self, checkpointing: dict[str, Any]) -> list[Suggestion]:
        """Gradient checkpointing, LoRA: each that the spec does not use yet and that fits."""
        lora = {"finetuning_type": "lora"} if self.spec.finetuning_type == "full" else {}
        found = []
        for changes in (checkpointing, lora):
            need = self.need_if(changes) if changes else None
            if need is not None:
                found.append((changes, need, ""))
        return found

    def smaller_batches(self, checkpointing: dict[str, Any]) -> list[Suggestion]:
        """The largest micro-batch that fits, alone and with checkpointing."""
        found = []
        for base in ({}, checkpointing) if checkpointing else ({},):
            smaller = self._smaller_batch(base)
            if smaller is not None:
                found.append((*smaller, ""))
        return found

    def _smaller_batch(self, base: dict[str, Any]) -> tuple[dict[str, Any], int] | None:
        batch, accumulation = self.spec.per_device_train_batch_size, self.spec.gradient_accumulation_steps
        while batch > 1:
            batch, accumulation = batch // 2, accumulation * 2  # the effective batch stays
            changes = {**base, "per_device_train_batch_size": batch, "gradient_accumulation_steps": accumulation}
            need = self.need_if(changes)
            if need is not None:
                return changes, need
        return None

    def more_gpus(self, checkpointing: dict[str, Any]) -> list[Suggestion]:
        """The fewest GPUs (2, 4, 8, 16) there are that ZeRO-3 would make it fit on; a pinned job gets none."""
        healthy = sum(g.healthy for g in self.gpus)
        for n in (2, 4, 8, 16):
            if self.spec.gpus < n <= healthy and self.spec.gpu_ids is None:
                changes = {"gpus": n, **checkpointing}
                need = self.need_if(changes, Z3)
                if need is not None:
                    return [(changes, need, f" with deepspeed: {Z3_CONFIG} (ZeRO-3)")]
        return []


def _said(changes: dict[str, Any], need: int, extra: str) -> str:
    said = ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in changes.items())
    return f"{said}{extra} (about {need / GIB:.1f} GiB per GPU)"


def remote_code_errors(trust_remote_code: bool, allow_remote_code: bool) -> list[dict[str, str]]:
    """trust_remote_code is the operator's call (FTQ_ALLOW_REMOTE_CODE), not the submitter's."""
    if trust_remote_code and not allow_remote_code:
        return [field_error("trust_remote_code", remote_code_refusal())]
    return []


def requirement_errors(spec: JobSpec, model_config: dict[str, Any] | None) -> list[dict[str, str]]:
    """What the spec needs that this machine lacks: a package, or a GPU for a CPU slot
    (worker.preflight.requirements)."""
    return [field_error(key, message) for key, message in missing(needs(spec, model_config), spec.gpus)]


def admission_errors(
    spec: JobSpec, assessment: Assessment, gpus: list[GpuInfo], cpu_slots: int
) -> list[dict[str, str]]:
    """Why this machine can never run the job (empty when it can, now or later)."""
    if spec.gpus == 0:
        if cpu_slots == 0:
            return [
                field_error(
                    "gpus",
                    "0 asks for a CPU slot and this daemon has none (FTQ_CPU_SLOTS=0): "
                    "ask for a GPU, or start the daemon with FTQ_CPU_SLOTS=1",
                )
            ]
        return []
    if spec.gpu_ids is not None:
        indices = {g.index for g in gpus}
        missing = [i for i in spec.gpu_ids if i not in indices]
        if missing:
            have = ", ".join(str(i) for i in sorted(indices)) or "none"
            return [field_error("gpu_ids", f"GPU {', '.join(map(str, missing))} does not exist here (GPUs: {have})")]
    if spec.gpus > len(gpus):
        have = f"{len(gpus)} GPU" + ("" if len(gpus) == 1 else "s")
        fix = f"ask for at most {len(gpus)}" if gpus else "set gpus: 0 to run on a CPU slot"
        return [field_error("gpus", f"the job asks for {spec.gpus} and this daemon has {have}: {fix}")]
    nodes = {g.node for g in gpus}
    if spec.gpu_ids is None and assessment.largest_offer is None and len(nodes) > 1:
        sizes = sorted(Counter(g.node for g in gpus if g.healthy).values(), reverse=True)
        fit = servable_gpus(spec.gpus, gpus)
        return [
            field_error(
                "gpus",
                f"the job asks for {spec.gpus} GPUs; no node of the cluster has that many (its nodes have "
                f"{', '.join(map(str, sizes))} healthy GPUs), and across nodes a job runs with the same number on "
                f"each (torchrun's ranks per node), which {spec.gpus} does not split into: "
                + (f"ask for {fit}" if fit else "no GPU count fits"),
            )
        ]
    if not assessment.fits_ever:
        need = assessment.need_bytes / GIB
        offer = (assessment.largest_offer or 0) / GIB
        where = "its pinned GPUs have" if spec.gpu_ids is not None else f"the best {spec.gpus} GPU(s) here have"
        fixes = (
            "; ".join(assessment.suggestions) or "a smaller micro-batch or cutoff_len, LoRA, or more GPUs with ZeRO-3"
        )
        return [
            field_error(
                "gpus",
                f"the job needs about {need:.1f} GiB per GPU (estimate) and {where} {offer:.1f} GiB, "
                f"less the margin: it can never fit. It would fit with: {fixes}",
            )
        ]
    return []
