"""`ftq submit` reads a file's relative paths as llamafactory-cli does: against the directory it runs in."""

from __future__ import annotations

from pathlib import Path

from server.cli.paths import absolute_paths


def test_relative_paths_resolve_against_the_cwd_and_dataset_dir_defaults_to_data(tmp_path: Path):
    (tmp_path / "models/tiny").mkdir(parents=True)
    spec = {
        "model_name_or_path": "models/tiny",
        "dataset": "identity",
        "deepspeed": "examples/deepspeed/ds_z3_config.json",
        "tokenized_path": "saves/tok",
        "output_dir": "saves/lora/sft",
    }
    resolved = absolute_paths(spec, tmp_path)
    assert resolved["model_name_or_path"] == str(tmp_path / "models/tiny")
    assert resolved["dataset_dir"] == str(tmp_path / "data")  # LLaMA-Factory's default, written out
    assert resolved["deepspeed"] == str(tmp_path / "examples/deepspeed/ds_z3_config.json")
    assert resolved["tokenized_path"] == str(tmp_path / "saves/tok")
    assert resolved["output_dir"] == "saves/lora/sft"  # the daemon places it inside its FTQ_OUTPUT_DIRS
    assert spec["model_name_or_path"] == "models/tiny"  # the caller's dict is left as it was


def test_a_hub_id_is_sent_as_it_is_and_a_path_written_as_one_is_resolved(tmp_path: Path):
    (tmp_path / "adapters/a").mkdir(parents=True)
    spec = {"model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "adapter_name_or_path": "adapters/a, ./b, org/c"}
    resolved = absolute_paths(spec, tmp_path)
    assert resolved["model_name_or_path"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert resolved["adapter_name_or_path"] == f"{tmp_path / 'adapters/a'},{tmp_path / 'b'},org/c"


def test_absolute_paths_and_hub_dataset_dirs_are_left_alone(tmp_path: Path):
    spec = {"model_name_or_path": "/models/x", "dataset": "d", "dataset_dir": "REMOTE:llamafactory/demo_data"}
    assert absolute_paths(spec, tmp_path) == spec
