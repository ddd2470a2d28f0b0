"""The method keys through a real worker subprocess on the tiny model: two steps each, on CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.integration.test_worker import DATA_DIR, MODEL_DIR, log_of, records, spawn  # noqa: F401 - spawn: a fixture
from worker.spec.layout import SPEC_FILE

pytestmark = pytest.mark.integration


def run(tmp_path: Path, spawn, name: str = "run", **fields: Any) -> Path:  # noqa: F811 - the fixture, passed in
    """Train two steps with `fields` in tmp_path/name; the run dir, once the worker succeeded."""
    run_dir = tmp_path / name
    run_dir.mkdir(exist_ok=True)
    spec = {
        "gpus": 0, "model_name_or_path": str(MODEL_DIR), "dataset": "cs_billing", "dataset_dir": str(DATA_DIR),
        "max_samples": 16, "cutoff_len": 64, "per_device_train_batch_size": 2, "max_steps": 2, "logging_steps": 1,
        "save_steps": 2, "learning_rate": 1e-3, "lr_scheduler_type": "constant", **fields,
    }  # fmt: skip
    (run_dir / SPEC_FILE).write_text(json.dumps(spec))
    assert spawn(run_dir).wait(timeout=120) == 0, log_of(run_dir)
    assert records(run_dir)[-1]["status"] == "succeeded"
    return run_dir


def adapter_config(path: Path) -> dict[str, Any]:
    return json.loads((path / "adapter_config.json").read_text())


def test_freeze_trains_only_its_layers_and_resumes_from_its_checkpoint(tmp_path: Path, spawn) -> None:  # noqa: F811
    fields = dict(finetuning_type="freeze", freeze_trainable_layers=1, freeze_extra_modules="embed_tokens")
    run_dir = run(tmp_path, spawn, **fields)
    before = load_file(str(MODEL_DIR / "model.safetensors"))
    after = load_file(str(run_dir / "output" / "model.safetensors"))
    changed = sorted(name for name in before if not torch.equal(before[name], after[name]))
    assert changed == ["model.embed_tokens.weight"] + sorted(name for name in before if ".layers.1." in name)
    assert json.loads((run_dir / "checkpoints" / "checkpoint-2" / "ftq_checkpoint.json").read_text())["method"] == (
        "freeze layers=1 modules=all extra=embed_tokens"
    )

    run(tmp_path, spawn, **fields, max_steps=4)  # the next attempt, further: it resumes from checkpoint-2
    start, end = [r for r in records(run_dir) if r["kind"] == "start"][-1], records(run_dir)[-1]
    assert start["resumed_from_step"] == 2 and end["current_steps"] == 4


def test_oft_trains_and_saves_an_oft_adapter(tmp_path: Path, spawn) -> None:  # noqa: F811
    config = adapter_config(run(tmp_path, spawn, finetuning_type="oft", oft_block_size=16) / "output")
    assert (config["peft_type"], config["r"], config["oft_block_size"]) == ("OFT", 0, 16)


def test_dora_saves_a_dora_adapter(tmp_path: Path, spawn) -> None:  # noqa: F811
    output = run(tmp_path, spawn, use_dora=True, lora_rank=4) / "output"
    assert adapter_config(output)["use_dora"] is True and adapter_config(output)["r"] == 4
    assert any("lora_magnitude_vector" in name for name in load_file(str(output / "adapter_model.safetensors")))


def test_loraplus_trains_the_b_matrices_at_the_ratio(tmp_path: Path, spawn) -> None:  # noqa: F811
    run_dir = run(tmp_path, spawn, loraplus_lr_ratio=16.0)
    state = torch.load(run_dir / "checkpoints" / "checkpoint-2" / "optimizer.pt", weights_only=True)
    assert [(group["lr"], len(group["params"])) for group in state["param_groups"]] == [
        (1e-3, 14), (1e-6, 0), (pytest.approx(16e-3), 14), (pytest.approx(16e-3), 0)
    ]  # fmt: skip


def test_training_on_an_existing_adapter_keeps_its_rank_and_moves_its_weights(tmp_path: Path, spawn) -> None:  # noqa: F811
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR))
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    peft.save_pretrained(str(tmp_path / "adapter"))

    output = run(tmp_path, spawn, adapter_name_or_path=str(tmp_path / "adapter"), lora_rank=8) / "output"

    assert adapter_config(output)["r"] == 4 and set(adapter_config(output)["target_modules"]) == {"q_proj", "v_proj"}
    before = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    after = load_file(str(output / "adapter_model.safetensors"))
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
