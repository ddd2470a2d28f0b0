"""worker.data.tokenized: a set saved at tokenized_path, reused only when made from the same inputs, written atomically,
confined to the output dirs."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import datasets
import pytest
from transformers import PreTrainedTokenizerFast

from tests.helpers import wait_for
from tests.unit.data_helpers import OPENAI_ENTRY, make_tokenizer, qa, write_dataset
from worker.data import pipeline as data_module
from worker.data import tokenized
from worker.data.pipeline import DataError, build_datasets
from worker.spec.job import JobSpec


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture
def dirs(tmp_path: Path, tokenizer: PreTrainedTokenizerFast) -> dict[str, Path]:
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_dataset(inputs / "data", {"cs": OPENAI_ENTRY}, {"chat.jsonl": [qa(i) for i in range(6)]})
    tokenizer.save_pretrained(inputs / "model")
    out.mkdir()
    return {"in": inputs, "out": out, "set": out / "sets/cs"}


def spec(dirs: dict[str, Path], **fields: Any) -> JobSpec:
    return JobSpec(
        **{
            "model_name_or_path": str(dirs["in"] / "model"),
            "dataset": "cs",
            "dataset_dir": str(dirs["in"] / "data"),
            "cutoff_len": 64,
            "tokenized_path": str(dirs["set"]),
            **fields,
        }  # fmt: skip
    )


def build(dirs: dict[str, Path], tokenizer: PreTrainedTokenizerFast, **fields: Any) -> tuple[Any, Any]:
    train, held_out, _ = build_datasets(spec(dirs, **fields), tokenizer, [str(dirs["in"])], [str(dirs["out"])])
    return train, held_out


def no_tokenizing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_: Any) -> None:
        raise AssertionError("tokenized again instead of reusing the saved set")

    monkeypatch.setattr(data_module, "prepare", fail)


def test_a_saved_set_is_reused_and_loadable_by_llamafactory(dirs, tokenizer, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, "worker")
    train, held_out = build(dirs, tokenizer, val_size=2)
    manifest = json.loads((dirs["set"] / tokenized.MANIFEST).read_text())
    assert manifest["recipe"]["cutoff_len"] == 64 and manifest["recipe"]["datasets"][0]["name"] == "cs"
    assert {"path", "size", "mtime_ns"} <= set(manifest["recipe"]["datasets"][0]["files"][0])
    assert len(datasets.load_from_disk(str(dirs["set"]))["validation"]) == 2  # LLaMA-Factory's load_from_disk

    no_tokenizing(monkeypatch)
    again, held_again = build(dirs, tokenizer, val_size=2)

    assert "reusing the saved set (4 train, 2 validation)" in caplog.text
    assert again["input_ids"] == train["input_ids"] and held_again["labels"] == held_out["labels"]
    assert [p.name for p in dirs["set"].parent.iterdir() if p.name.startswith(".cs.")] == [".cs.lock"]


def one_row_more(dirs: dict[str, Path]) -> None:
    (dirs["in"] / "data/chat.jsonl").write_text("\n".join(json.dumps(qa(i)) for i in range(7)))


def another_entry(dirs: dict[str, Path]) -> None:
    entry = {**OPENAI_ENTRY, "columns": {"messages": "messages", "system": "sys"}}
    (dirs["in"] / "data/dataset_info.json").write_text(json.dumps({"cs": entry}))


@pytest.mark.parametrize(
    ("change", "cutoff_len", "said", "rows"),
    [
        (None, 32, "cutoff_len differ", 6),
        (one_row_more, 64, "datasets differ", 7),  # the file's size and mtime
        (another_entry, 64, "datasets differ", 6),  # its dataset_info.json entry
    ],
)
def test_a_set_made_from_something_else_is_rebuilt_with_a_log_line(
    dirs, tokenizer, caplog, change, cutoff_len, said, rows
) -> None:
    build(dirs, tokenizer)
    if change is not None:
        change(dirs)
    train, _ = build(dirs, tokenizer, cutoff_len=cutoff_len)
    assert f"was made from other data ({said}); rebuilding it" in caplog.text
    assert json.loads((dirs["set"] / tokenized.MANIFEST).read_text())["recipe"]["cutoff_len"] == cutoff_len
    assert len(train) == rows


def test_another_tokenizer_is_another_set(dirs, tokenizer, caplog) -> None:
    build(dirs, tokenizer)
    other = make_tokenizer()
    other.chat_template = other.chat_template.replace("<|im_start|>", "<|im_start|> ")
    build_datasets(spec(dirs), other, [str(dirs["in"])], [str(dirs["out"])])
    assert "(tokenizer differ); rebuilding it" in caplog.text


def test_a_build_that_fails_halfway_leaves_the_old_set_whole_and_nothing_half_written(
    dirs, tokenizer, monkeypatch
) -> None:
    train, _ = build(dirs, tokenizer)
    real_save = datasets.DatasetDict.save_to_disk

    def crash(self: datasets.DatasetDict, path: str, **kwargs: Any) -> None:
        real_save(self, path, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", crash)
    with pytest.raises(OSError, match="disk full"):
        build(dirs, tokenizer, cutoff_len=32)
    assert sorted(p.name for p in dirs["set"].parent.iterdir()) == [".cs.lock", "cs"]  # no temporary left
    monkeypatch.undo()
    no_tokenizing(monkeypatch)
    assert build(dirs, tokenizer)[0]["input_ids"] == train["input_ids"]  # the old set, whole


def test_leftovers_of_a_crashed_build_are_removed_by_the_next(dirs, tokenizer) -> None:
    (dirs["set"].parent / ".cs.tmp-abc/train").mkdir(parents=True)
    (dirs["set"].parent / ".cs.old-def").mkdir()
    (dirs["set"].parent / ".other.tmp-x").mkdir()  # another set's: not ours to remove
    build(dirs, tokenizer)
    assert sorted(p.name for p in dirs["set"].parent.iterdir()) == [".cs.lock", ".other.tmp-x", "cs"]


def test_a_directory_ftq_did_not_save_is_neither_reused_nor_deleted(dirs, tokenizer) -> None:
    dirs["set"].mkdir(parents=True)
    (dirs["set"] / "dataset_dict.json").write_text('{"splits": ["train"]}')  # what LLaMA-Factory saves
    with pytest.raises(DataError, match="holds something ftq did not save .*neither reuses .* nor deletes it"):
        build(dirs, tokenizer)
    assert (dirs["set"] / "dataset_dict.json").exists()
    (dirs["set"] / "dataset_dict.json").unlink()
    assert len(build(dirs, tokenizer)[0]) == 6  # an empty directory is used


def test_tokenized_path_outside_the_output_dirs_is_refused(dirs, tokenizer, tmp_path) -> None:
    with pytest.raises(DataError, match="must lie inside one of the daemon's output dirs"):
        build(dirs, tokenizer, tokenized_path=str(tmp_path / "elsewhere"))
    (dirs["out"] / "link").symlink_to(tmp_path)
    with pytest.raises(DataError, match="symlinks resolved"):
        build(dirs, tokenizer, tokenized_path=str(dirs["out"] / "link/set"))
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "set").exists()


def test_reading_back_is_confined_a_file_swapped_for_a_link_out_is_not_read(dirs, tokenizer, caplog, tmp_path) -> None:
    build(dirs, tokenizer)
    arrow = next((dirs["set"] / "train").glob("*.arrow"))
    outside = tmp_path / "outside.arrow"
    os.rename(arrow, outside)
    arrow.symlink_to(outside)
    train, _ = build(dirs, tokenizer)
    assert "cannot be read back" in caplog.text and "leads outside" in caplog.text
    assert len(train) == 6 and outside.exists() and not arrow.is_symlink()  # rebuilt; the target untouched


def test_a_truncated_file_is_rebuilt(dirs, tokenizer, caplog) -> None:
    build(dirs, tokenizer)
    arrow = next((dirs["set"] / "train").glob("*.arrow"))
    with open(arrow, "r+b") as f:
        f.truncate(100)
    assert len(build(dirs, tokenizer)[0]) == 6
    assert "the manifest says" in caplog.text


def test_a_second_process_waits_for_the_first_then_reuses_its_set(dirs, tokenizer, caplog) -> None:
    caplog.set_level(logging.INFO, "worker")
    done: dict[str, Any] = {}
    with tokenized.locked(dirs["set"], [str(dirs["out"])]):
        thread = threading.Thread(target=lambda: done.update(result=build(dirs, tokenizer)))
        thread.start()
        wait_for(lambda: "waiting for another process" in caplog.text, timeout=30, what="the build to wait")
        assert "result" not in done
    thread.join(60)
    assert len(done["result"][0]) == 6
