"""output_dir gets the result: every file placed whole, never outside the output dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.outputs.publish import publish
from worker.preflight.confine import BadFile


def result(tmp_path: Path) -> Path:
    source = tmp_path / "run/output"
    (source / "sub").mkdir(parents=True)
    (source / "adapter_model.safetensors").write_bytes(b"weights")
    (source / "sub/extra.json").write_text("{}")
    return source


def test_every_file_lands_in_output_dir_linked_to_the_run_dirs_copy(tmp_path: Path):
    source, out = result(tmp_path), tmp_path / "outputs"
    out.mkdir()
    where = publish(source, str(out / "saves/sft"), [str(out)])
    placed = Path(where) / "adapter_model.safetensors"
    assert placed.read_bytes() == b"weights" and (Path(where) / "sub/extra.json").is_file()
    assert os.stat(placed).st_ino == os.stat(source / "adapter_model.safetensors").st_ino  # a hard link, no copy
    assert not list(Path(where).glob(".*ftq-partial"))


def test_an_existing_file_is_replaced_whole_and_the_run_dir_keeps_its_own(tmp_path: Path):
    source, out = result(tmp_path), tmp_path / "outputs"
    (out / "sft").mkdir(parents=True)
    (out / "sft/adapter_model.safetensors").write_bytes(b"old")
    publish(source, str(out / "sft"), [str(out)])
    assert (out / "sft/adapter_model.safetensors").read_bytes() == b"weights"


def test_a_symlink_out_of_the_output_dirs_is_refused(tmp_path: Path):
    source, out, elsewhere = result(tmp_path), tmp_path / "outputs", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "sneaky").symlink_to(elsewhere)
    with pytest.raises(BadFile, match="outside the directories this daemon may write"):
        publish(source, str(out / "sneaky/sft"), [str(out)])
    assert not any(elsewhere.iterdir())
