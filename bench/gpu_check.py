"""The GPU checks of the LLaMA-Factory methods, in one go: `make gpu-check` (well under 10 minutes on one GPU).

A real daemon on real NVML runs, one after another on one GPU, LoRA jobs on a
~0.3B-parameter Qwen2-shaped model made here from a config (random weights: no
network; the shipped tiny tokenizer): a bf16 LoRA baseline, the same job as
QLoRA 4-bit (quantization_bit: 4), and attention as eager (flash_attn: disabled)
against sdpa. It prints each job's peak memory and tokens/s from its own end and
metric records, and the ratios against the baseline run in the same call. Then
bench.throughput's table for a Qwen2.5-0.5B shape (8 x 4 samples of short
chats, each batching mode a job) and a PASS/FAIL line: whether ftq's default
reaches 5x the padded run's real tokens/s with 40% less peak memory.

    python -m bench.gpu_check [--steps 30] [--throughput-steps 12] [--keep DIR]

Needs CUDA and bitsandbytes (`pip install '.[gpu]'`); it says so and exits 2 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import throughput
from bench.chat_lengths import describe
from server.cli.demo import free_port, start_daemon, wait_healthy
from server.cli.main import Client, watch

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "configs/models/tiny-chat"
DATA = REPO / "configs/data"

# (label, the spec's changes, the baseline it is compared with)
RUNS: list[tuple[str, dict[str, Any], str | None]] = [
    ("lora bf16 (baseline)", {}, None),
    ("qlora 4-bit", {"quantization_bit": 4}, "lora bf16 (baseline)"),
    ("eager attention", {"flash_attn": "disabled"}, None),
    ("sdpa attention", {"flash_attn": "sdpa"}, "eager attention"),
]


def make_model(where: Path) -> Path:
    """A Qwen2-shaped causal LM of ~0.3B parameters with random weights, saved in bf16 with the tiny tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER, local_files_only=True)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(where)
    tokenizer.save_pretrained(where)
    return where


def spec(model: Path, label: str, changes: dict[str, Any], steps: int) -> dict[str, Any]:
    return {
        "name": label.split(" (")[0].replace(" ", "-"),
        "model_name_or_path": str(model),
        "dataset_dir": str(DATA),
        "dataset": "customer_service",
        "finetuning_type": "lora",
        "lora_target": "all",
        "bf16": True,
        "cutoff_len": 512,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-4,
        "max_steps": steps,
        "logging_steps": 5,
        "save_steps": 10_000,
        "gpus": 1,
        **changes,
    }


def measure(client: Client, job_id: int) -> dict[str, Any]:
    job = client.request("GET", f"/jobs/{job_id}")
    records = client.request("GET", f"/jobs/{job_id}/metrics")["data"]
    end = next((r for r in reversed(records) if r.get("kind") == "end"), {})
    metrics = [r for r in records if r.get("kind") == "metric"]
    rates = [r["throughput"] for r in metrics[1:] if r.get("throughput")]  # the first interval holds warm-up
    return {
        "state": job["state"],
        "peak_gib": end.get("peak_vram_allocated"),
        "tokens_per_s": round(sum(rates) / len(rates), 1) if rates else None,
        "final_loss": end.get("final_loss"),
        "error": end.get("error"),
    }


def throughput_check(client: Client, work: Path, steps: int) -> list[dict[str, Any]]:
    """bench.throughput's table for Qwen2.5-0.5B, then PASS or FAIL; the table's rows."""
    print(f"\nReal tokens/s by batching mode (bench.throughput), {steps} steps a mode:")
    data = work / "throughput-data"
    print(f"data: synthetic chats, {describe(throughput.make_data(data, steps))}")
    shape = throughput.gpu_model_config(throughput.GPU_MODELS["Qwen2.5-0.5B"])
    bench = throughput.Bench(client, work, data, steps, bf16=True)
    rows = bench.measure_model("Qwen2.5-0.5B", shape, list(throughput.MODES))
    speed, memory = throughput.default_vs_padded(rows)
    passed = speed is not None and memory is not None and speed >= 5 and memory <= 0.6
    goal = "ftq's default: >= 5x the padded run's real tokens/s and >= 40% less peak memory"
    print(f"{'PASS' if passed else 'FAIL'}: {goal}")
    return rows


def ratio(value: Any, baseline: Any) -> str:
    return f"{value / baseline:.2f}" if value and baseline else "-"


def print_runs(results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{'run':<22} {'state':<10} {'peak GiB':>9} {'tokens/s':>9} {'mem ratio':>10} {'speed ratio':>12}")
    for label, _, baseline in RUNS:
        r, b = results[label], results.get(baseline or "", {})
        print(
            f"{label:<22} {r['state']:<10} {r['peak_gib'] or '-':>9} {r['tokens_per_s'] or '-':>9} "
            f"{ratio(r['peak_gib'], b.get('peak_gib')) if baseline else '1.00':>10} "
            f"{ratio(r['tokens_per_s'], b.get('tokens_per_s')) if baseline else '1.00':>12}"
        )
        if r["error"]:
            print(f"  {label}: {r['error']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--throughput-steps", type=int, default=12, help="steps per batching mode")
    parser.add_argument("--keep", type=Path, help="keep the model, data dir and logs here")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    if importlib.util.find_spec("bitsandbytes") is None:
        print("gpu_check: bitsandbytes is not installed; pip install '.[gpu]'", file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="ftq-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work / "model")
    env_keys = {"FTQ_DATA_DIR": str(work / "data"), "FTQ_INPUT_DIRS": os.pathsep.join([str(REPO), str(work)])}
    os.environ.update(env_keys)
    port = free_port()
    log = work / "data" / "daemon.log"
    daemon = start_daemon(port, log)
    client = Client(f"http://127.0.0.1:{port}")
    results: dict[str, dict[str, Any]] = {}
    modes: list[dict[str, Any]] = []
    try:
        wait_healthy(client, daemon, log)
        print(f"GPU: {json.dumps(client.request('GET', '/gpus')['gpus'][0]['name'])}; model: {model}")
        for label, changes, _ in RUNS:  # one at a time: each has the GPU to itself
            job = client.request("POST", "/jobs", json=spec(model, label, changes, args.steps))
            watch(client, [job["id"]], out=open(os.devnull, "w"))
            results[label] = measure(client, job["id"])
        print_runs(results)
        modes = throughput_check(client, work, args.throughput_steps)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["state"] == "succeeded" for r in [*results.values(), *modes]) else 1


if __name__ == "__main__":
    sys.exit(main())
