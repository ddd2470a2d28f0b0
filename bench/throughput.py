"""Real tokens/s and peak memory of one fine-tuning job in each batching mode, through the real daemon and worker.

The same LoRA job (rank 8, lora_target all, micro-batch 8 x accumulation 4,
cutoff_len 1024, a fixed seed) runs once per mode, one after another, as a
daemon job each: LLaMA-Factory's padded default, padding-free rows, + ftq's
micro-batch, + the fused cross-entropy (ftq's default), and neat packing (which
changes the samples per step). The data are synthetic customer-service chats
of lognormal length (bench.chat_lengths: median ~178, mean ~216 tokens). Per
model it prints each mode's real (non-pad) tokens/s, pad share, peak memory,
loss at steps 1-5 and micro-batch x accumulation, all from the job's own
records; "n/a" where a record does not carry a field (yet).

On CPU the model is a ~20M-parameter Llama shape with 32000 embedding rows,
and the daemon fakes one 80 GiB GPU, so that placement and the micro-batch
choice run as on a GPU (the worker then trains on the CPU). With CUDA (or
--gpu) the models are Qwen2.5-0.5B and Llama-3.2-1B shapes
(tests/fixtures/model_configs), random bf16 weights, on the real NVML probe:

    PYTHONPATH=. python -m bench.throughput [--steps 6] [--modes padded,ftq-default] [--json PATH] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.chat_lengths import DATASET, describe, draw_lengths, write_dataset
from server.cli.demo import free_port, start_daemon, wait_healthy
from server.cli.main import Client, render_table, watch

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "configs/models/tiny-chat"
MODEL_CONFIGS = REPO / "tests/fixtures/model_configs"
MEDIAN, MEAN, CUTOFF = 178, 216, 1024
MICRO_BATCH, ACCUMULATION = 8, 4
CPU_STEPS = 6  # steps 1-5 and four steady intervals: the five modes in ~6 minutes on 2 idle cores (8: ~8)
PACKING_ROWS = 5  # neat packing fills a 1024-token row with ~5 chats of ~216: that many more samples per step

ALL_OFF = {"padding_free": False, "auto_micro_batch": False, "fused_cross_entropy": False}
# key -> (label, the spec's batching keys)
MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "padded": ("padded (LLaMA-Factory's default)", ALL_OFF),
    "padding-free": ("padding-free", {**ALL_OFF, "padding_free": True}),
    "auto-micro-batch": ("+ auto micro-batch", {**ALL_OFF, "padding_free": True, "auto_micro_batch": True}),
    "ftq-default": ("+ fused cross-entropy (ftq's default)", {}),
    "neat-packing": ("neat packing (changes samples/step)", {"neat_packing": True}),
}
BASELINE, DEFAULT = "padded", "ftq-default"

CPU_MODEL: dict[str, Any] = {  # ~20M parameters; the 32000-row logits cost as much as the layers
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
GPU_MODELS = {"Qwen2.5-0.5B": "qwen2.5-0.5b.json", "Llama-3.2-1B": "llama-3.2-1b.json"}


def gpu_model_config(file_name: str) -> dict[str, Any]:
    """A fixture's config.json, less the keys that describe the file rather than the shape."""
    config = json.loads((MODEL_CONFIGS / file_name).read_text())
    for key in ("architectures", "torch_dtype", "transformers_version"):
        config.pop(key, None)
    return config


def make_model(where: Path, shape: dict[str, Any], bf16: bool) -> int:
    """A causal LM of this shape with random weights, saved with the tiny tokenizer beside it; its parameter count.

    The embedding keeps the shape's rows although the tokenizer has 2048 tokens: the logits' cost is the shape's.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()  # "Writing model shards" would cut into the tables
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER, local_files_only=True)
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id, "bos_token_id": None}
    shape = {**shape, **ids}  # the tokenizer's, not those of the tokenizer the shape was published with
    config = AutoConfig.for_model(shape.pop("model_type"), **shape)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init of 1B weights is slow on CPU
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if bf16 else torch.float32)
    model.save_pretrained(where)
    tokenizer.save_pretrained(where)
    return sum(p.numel() for p in model.parameters())


def make_data(where: Path, steps: int) -> list[int]:
    """The chats for `steps` steps of every mode (neat packing's included); their realized token lengths."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER, local_files_only=True)
    targets = draw_lengths(steps * MICRO_BATCH * ACCUMULATION * PACKING_ROWS, MEDIAN, MEAN, CUTOFF)
    return write_dataset(where, tokenizer, targets)


def job_spec(model: Path, data: Path, mode: str, steps: int, bf16: bool) -> dict[str, Any]:
    return {
        "name": f"throughput-{mode}",
        "model_name_or_path": str(model),
        "dataset_dir": str(data),
        "dataset": DATASET,
        "finetuning_type": "lora",
        "lora_rank": 8,
        "lora_target": "all",
        "cutoff_len": CUTOFF,
        "per_device_train_batch_size": MICRO_BATCH,
        "gradient_accumulation_steps": ACCUMULATION,
        "learning_rate": 1e-4,
        "max_steps": steps,
        "logging_steps": 1,
        "save_steps": 100_000,
        "seed": 42,
        "bf16": bf16,
        "gpus": 1,
        **MODES[mode][1],
    }


def seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def steady_tokens_per_s(metrics: Sequence[dict[str, Any]]) -> float | None:
    """Real tokens/s from the step-2 record to the last (step 1 holds the warm-up); else the last `throughput`."""
    later = [m for m in metrics if m.get("current_steps", 0) >= 2]
    if len(later) >= 2 and later[0].get("total_tokens") and later[-1].get("total_tokens"):
        first, last = later[0], later[-1]
        elapsed = seconds(last["timestamp"]) - seconds(first["timestamp"])
        if elapsed > 0:
            return (last["total_tokens"] - first["total_tokens"]) / elapsed
    return metrics[-1].get("throughput") if metrics else None


def peak_gib(end: dict[str, Any]) -> float | None:
    """The GPU's peak allocated memory; on CPU the worker's peak resident memory."""
    return end.get("peak_vram_allocated") or end.get("peak_rss_gib")


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One mode's row from its job's records (fields absent from the records are None)."""
    start = next((r for r in reversed(records) if r.get("kind") == "start"), {})
    end = next((r for r in reversed(records) if r.get("kind") == "end"), {})
    metrics = [r for r in records if r.get("kind") == "metric"]
    losses = {m["current_steps"]: m.get("loss") for m in metrics if m.get("current_steps", 0) <= 5}
    return {
        "micro_batch": start.get("micro_batch"),
        "gradient_accumulation_steps": start.get("gradient_accumulation_steps"),
        "batching": start.get("batching"),
        "attention": start.get("attention"),
        "loss_kernel": start.get("loss_kernel"),
        "tokens_per_s": steady_tokens_per_s(metrics),
        "pad_share": end.get("pad_share"),
        "real_tokens": end.get("real_tokens"),
        "computed_tokens": end.get("computed_tokens"),
        "peak_gib": peak_gib(end),
        "peak_vram_allocated": end.get("peak_vram_allocated"),
        "peak_vram_reserved": end.get("peak_vram_reserved"),
        "peak_rss_gib": end.get("peak_rss_gib"),
        "losses": [losses.get(step) for step in range(1, 6)],
        "error": end.get("error"),
    }


@dataclass
class Bench:
    """What every mode's job shares: the daemon, the data, the steps, the precision; and where models go."""

    client: Client
    work: Path
    data: Path
    steps: int
    bf16: bool

    def measure_model(self, label: str, shape: dict[str, Any], modes: Sequence[str]) -> list[dict[str, Any]]:
        """Build the model, run each mode on it, print its table; the table's rows."""
        model = self.work / "models" / label.split()[0]
        params = make_model(model, shape, self.bf16)
        weights = "bf16" if self.bf16 else "fp32"
        print(f"\n{label} ({params / 1e6:.1f}M parameters, random {weights} weights), {self.steps} steps:")
        rows = [self.run_mode(model, mode) for mode in modes]  # one at a time: each has the machine to itself
        print(table(rows))
        print(verdict_line(rows))
        return rows

    def run_mode(self, model: Path, mode: str) -> dict[str, Any]:
        """Submit the mode's job, wait for its end, and read its records."""
        started = time.monotonic()
        spec = job_spec(model, self.data, mode, self.steps, self.bf16)
        job = self.client.request("POST", "/jobs", json=spec)
        with open(os.devnull, "w") as quiet:
            (ended,) = watch(self.client, [job["id"]], out=quiet)
        records = self.client.request("GET", f"/jobs/{job['id']}/metrics")["data"]
        row = {"mode": mode, "label": MODES[mode][0], "job": job["id"], "state": ended["state"], **summarize(records)}
        if row["state"] != "succeeded" and not row["error"]:  # a worker killed outright wrote no end record
            row["error"] = ended.get("reason")
        # Other work on the machine slows a CPU run: the load average tells a noisy row from a slow mode.
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        took = f"{time.monotonic() - started:.0f} s, load average {fmt(load, '.1f')} on {os.cpu_count()} cores"
        print(f"  {row['label']}: {row['state']} ({took})", flush=True)
        return row


def fmt(value: Any, spec: str = "", unit: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + unit


def ratio(row: dict[str, Any], rows: Sequence[dict[str, Any]], key: str) -> float | None:
    """The row's `key` over the padded run's, when both are known."""
    base = next((r for r in rows if r["mode"] == BASELINE), {})
    return row[key] / base[key] if row.get(key) and base.get(key) else None


def table(rows: Sequence[dict[str, Any]]) -> str:
    header = ("mode", "state", "micro x acc", "real tok/s", "vs padded", "pad share", "peak GiB", "loss steps 1-5")
    lines = [header]
    for r in rows:
        shape = f"{r['micro_batch']} x {r['gradient_accumulation_steps']}" if r["micro_batch"] else "n/a"
        losses = " ".join(fmt(loss, ".3f") for loss in r["losses"])
        speed = ratio(r, rows, "tokens_per_s")
        lines.append(
            (r["label"], r["state"], shape, fmt(r["tokens_per_s"], ".0f"), fmt(speed, ".2f", "×"),
             fmt(r["pad_share"], ".1%"), fmt(r["peak_gib"], ".2f"), losses)
        )  # fmt: skip
    notes = [f"  {r['label']}: {r['error']}" for r in rows if r["error"]]
    kernels = [
        f"  {r['label']}: batching {r['batching']}, attention {r['attention']}, loss {r['loss_kernel']}"
        for r in rows
        if r["batching"] or r["attention"] or r["loss_kernel"]
    ]
    return "\n".join([render_table(lines), *kernels, *notes])


def default_vs_padded(rows: Sequence[dict[str, Any]]) -> tuple[float | None, float | None]:
    """ftq's default over the padded run: (tokens/s ratio, peak memory ratio); None where unknown."""
    default = next((r for r in rows if r["mode"] == DEFAULT), None)
    if default is None:
        return None, None
    return ratio(default, rows, "tokens_per_s"), ratio(default, rows, "peak_gib")


def verdict_line(rows: Sequence[dict[str, Any]]) -> str:
    speed, memory = default_vs_padded(rows)
    change = fmt(None if memory is None else memory - 1, "+.0%")
    return f"ftq default vs padded: {fmt(speed, '.2f', '×')} real tokens/s, peak memory {change}"


def print_header(gpu: bool, lengths: Sequence[int], client: Client) -> None:
    gpus = client.request("GET", "/gpus")
    where = ", ".join(g["name"] for g in gpus["gpus"]) or "none"
    print(f"daemon GPUs: {where} ({gpus['probe']}); training on {'the GPU' if gpu else 'the CPU'}")
    print(f"data: synthetic chats, {describe(lengths)} by the tiny tokenizer's chat template")
    print(
        f"job: LoRA r8 all, {MICRO_BATCH} x {ACCUMULATION} samples/step, cutoff_len {CUTOFF}; real tok/s from "
        f"step 2 to the last; peak GiB: {'GPU peak allocated' if gpu else 'the worker process peak RSS'}"
    )


def start(work: Path, gpu: bool) -> tuple[Client, subprocess.Popen[bytes]]:
    """A daemon on a free port whose data and input dirs are `work` (and the repository); its client."""
    os.environ.update({"FTQ_DATA_DIR": str(work / "ftq"), "FTQ_INPUT_DIRS": os.pathsep.join([str(REPO), str(work)])})
    if gpu:
        os.environ.pop("FTQ_FAKE_GPUS", None)  # the real NVML probe
    else:
        os.environ["FTQ_FAKE_GPUS"] = "1x80GiB"  # placement and the micro-batch choice run; training on CPU
    port, log = free_port(), work / "ftq" / "daemon.log"
    daemon = start_daemon(port, log)
    client = Client(f"http://127.0.0.1:{port}")
    wait_healthy(client, daemon, log)
    return client, daemon


def stop(daemon: subprocess.Popen[bytes]) -> None:
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout=30)
    except subprocess.TimeoutExpired:
        daemon.kill()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per mode (6 on CPU, 12 on GPU)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of: {', '.join(MODES)}")
    parser.add_argument("--gpu", action="store_true", help="the GPU models (the default when CUDA is there)")
    parser.add_argument("--json", type=Path, help="write the tables here as JSON")
    parser.add_argument("--keep", type=Path, help="keep the models, data and daemon dir here")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; the modes are {', '.join(MODES)}")
    if args.steps is not None and args.steps < 3:
        parser.error("--steps must be at least 3 (tokens/s is measured from step 2 to the last)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    gpu = args.gpu or torch.cuda.is_available()
    if gpu and not torch.cuda.is_available():
        print("throughput: --gpu, but there is no CUDA device here", file=sys.stderr)
        return 2
    steps = args.steps or (12 if gpu else CPU_STEPS)
    work = args.keep or Path(tempfile.mkdtemp(prefix="ftq-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    lengths = make_data(work / "data", steps)
    client, daemon = start(work, gpu)
    try:
        print_header(gpu, lengths, client)
        cases = {n: gpu_model_config(f) for n, f in GPU_MODELS.items()} if gpu else {"Llama-20M (CPU)": CPU_MODEL}
        bench = Bench(client, work, work / "data", steps, bf16=gpu)
        tables = {label: bench.measure_model(label, shape, args.modes) for label, shape in cases.items()}
    finally:
        stop(daemon)
    if args.json:
        data = {"median": statistics.median(lengths), "mean": statistics.fmean(lengths), "n": len(lengths)}
        args.json.write_text(json.dumps({"steps": steps, "gpu": gpu, "data": data, "tables": tables}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["state"] == "succeeded" for rows in tables.values() for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
