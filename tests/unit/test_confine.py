"""worker.preflight.confine and worker.preflight.modelfiles:
files read only inside the input dirs, only regular, never blocking."""

from __future__ import annotations

import json
import os
import shutil
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO
from worker.preflight.confine import (
    JSON_LIMIT,
    CannotRead,
    FileTooLarge,
    InvalidJson,
    NotARegularFile,
    NotUtf8,
    OutsideInputDirs,
    check_dir,
    files_of,
    input_dirs_from_env,
    read_json,
    read_text,
    remote_code_allowed,
    worker_settings,
)
from worker.preflight.modelfiles import bad_file_behind, check_model_files, check_safetensors

TINY = REPO / "configs/models/tiny-chat"


def within_seconds(fn: Callable[[], Any], seconds: float = 5.0) -> Any:
    """fn() in a thread; the test fails (instead of hanging) when it has not returned in time."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out/secret.json").write_text('{"password": "hunter2"}')
    (tmp_path / "in/ok.json").write_text('{"a": 1}')
    return tmp_path


def roots(root: Path) -> list[str]:
    return [os.path.realpath(root / "in")]


def test_a_regular_file_inside_is_read(root: Path) -> None:
    assert read_json(root / "in/ok.json", roots(root)) == {"a": 1}


def test_a_fifo_is_refused_without_blocking(root: Path) -> None:
    os.mkfifo(root / "in/pipe.json")
    with pytest.raises(NotARegularFile, match="FIFO"):
        within_seconds(lambda: read_json(root / "in/pipe.json", roots(root)))


def test_a_symlink_out_of_the_roots_is_refused_and_nothing_of_it_shown(root: Path) -> None:
    (root / "in/link.json").symlink_to(root / "out/secret.json")
    with pytest.raises(OutsideInputDirs, match="leads outside the directories this daemon may read") as info:
        read_text(root / "in/link.json", roots(root))
    assert "hunter2" not in str(info.value) and "FTQ_INPUT_DIRS" in str(info.value)
    # Outside the roots, a missing file and an existing one get the same answer.
    with pytest.raises(OutsideInputDirs):
        read_text(root / "out/missing.json", roots(root))


def test_a_directory_whose_file_is_a_symlink_out_is_refused_naming_the_file(root: Path) -> None:
    (root / "in/shards").mkdir()
    (root / "in/shards/a.jsonl").write_text("{}\n")
    (root / "in/shards/b.jsonl").symlink_to(root / "out/secret.json")
    (root / "in/shards/sub").mkdir()  # passed over, as LLaMA-Factory does
    with pytest.raises(OutsideInputDirs, match="b.jsonl"):
        files_of(root / "in/shards", roots(root))
    (root / "in/shards/b.jsonl").unlink()
    assert files_of(root / "in/shards", roots(root)) == [str(root / "in/shards/a.jsonl")]


def test_names_that_no_file_can_have_are_sentences(root: Path) -> None:
    with pytest.raises(CannotRead, match="NUL byte"):
        read_json(str(root / "in/ok.json") + "\x00x", roots(root))
    long = root / "in" / ("a" * 5000)
    with pytest.raises(CannotRead, match="too long a name") as info:
        read_json(long, roots(root))
    assert "(5" in str(info.value) and len(str(info.value)) < 600  # the name is cut, not echoed whole
    (root / "in/loop1").symlink_to(root / "in/loop2")
    (root / "in/loop2").symlink_to(root / "in/loop1")
    with pytest.raises(CannotRead, match="symlink loop"):
        read_json(root / "in/loop1", roots(root))
    with pytest.raises(CannotRead, match="does not exist"):
        read_json(root / "in/missing.json", roots(root))
    with pytest.raises(CannotRead, match="symlink loop"):
        check_dir(root / "in/loop1", roots(root))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_file_the_daemon_may_not_read_is_named(root: Path) -> None:
    (root / "in/ok.json").chmod(0)
    with pytest.raises(CannotRead, match="permission denied"):
        read_json(root / "in/ok.json", roots(root))


def test_non_utf8_text_names_the_line_and_column(root: Path) -> None:
    (root / "in/data.jsonl").write_bytes(b'{"a": "fine"}\n{"a": "caf\xe9"}\n')
    with pytest.raises(NotUtf8, match=r"line 2, column 11 \(byte 24\)") as info:
        read_text(root / "in/data.jsonl", roots(root))
    assert "data.jsonl" in str(info.value)


def test_a_file_over_the_limit_is_refused_before_it_is_read(root: Path) -> None:
    with open(root / "in/big.json", "wb") as big:  # sparse: 200 MiB on paper, nothing on disk
        big.write(b"\xff")
        big.truncate(200 << 20)
    with pytest.raises(FileTooLarge, match="200.0 MiB; the daemon reads at most 4.0 MiB"):
        read_json(root / "in/big.json", roots(root), JSON_LIMIT)


def test_truncated_json_says_where_it_ends(root: Path) -> None:
    (root / "in/cut.json").write_text('{\n  "hidden_size": 64,\n  "num_')
    with pytest.raises(InvalidJson, match=r"line 3, column 3.*looks truncated"):
        read_json(root / "in/cut.json", roots(root))


def test_unconfined_reads_keep_every_other_rule(root: Path) -> None:
    assert read_json(root / "out/secret.json", None) == {"password": "hunter2"}
    os.mkfifo(root / "out/pipe")
    with pytest.raises(NotARegularFile):
        within_seconds(lambda: read_json(root / "out/pipe", None))


def test_what_the_daemon_tells_its_workers(root: Path) -> None:
    env = worker_settings([root / "in", root / "out"], allow_remote_code=False)
    assert input_dirs_from_env(env) == [os.path.realpath(root / "in"), os.path.realpath(root / "out")]
    assert not remote_code_allowed(env) and remote_code_allowed(worker_settings([root], True))
    assert input_dirs_from_env({}) is None and not remote_code_allowed({})


# ---- a model directory, file by file ----


@pytest.fixture
def model(root: Path) -> Path:
    shutil.copytree(TINY, root / "in/model")
    return root / "in/model"


def test_the_shipped_model_passes(model: Path, root: Path) -> None:
    assert check_model_files(model, roots(root), parse=True) == []


def test_weights_that_are_a_symlink_out_are_named(model: Path, root: Path) -> None:
    (model / "model.safetensors").rename(root / "out/model.safetensors")
    (model / "model.safetensors").symlink_to(root / "out/model.safetensors")
    (problem,) = check_model_files(model, roots(root))
    assert "model.safetensors leads outside" in problem


def test_a_fifo_or_a_linked_directory_out_in_a_model_dir_is_named(model: Path, root: Path) -> None:
    os.mkfifo(model / "tokenizer.model")
    (model / "original").symlink_to(root / "out", target_is_directory=True)
    problems = within_seconds(lambda: check_model_files(model, roots(root)))
    assert any("tokenizer.model is a FIFO" in p for p in problems)
    assert any("original leads outside" in p for p in problems)


def test_a_truncated_safetensors_file_is_named_with_its_sizes(model: Path, root: Path) -> None:
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(Exception, match=rf"is truncated: .* at byte {size} and the file has {size - 1000} bytes"):
        check_safetensors(weights, roots(root))
    with open(weights, "r+b") as f:
        f.truncate(100)  # within the header now
    with pytest.raises(Exception, match="truncated or corrupt: its header claims"):
        check_safetensors(weights, roots(root))
    (model / "empty.safetensors").write_bytes(b"")
    with pytest.raises(Exception, match="too short for a safetensors header"):
        check_safetensors(model / "empty.safetensors", roots(root))


def test_a_safetensors_header_is_checked_exactly(root: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (root / "in/ok.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    check_safetensors(root / "in/ok.safetensors", roots(root))
    (root / "in/long.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 9)
    with pytest.raises(Exception, match="longer than its header says"):
        check_safetensors(root / "in/long.safetensors", roots(root))


def test_truncated_or_non_utf8_model_json_is_named_with_its_line(model: Path, root: Path) -> None:
    text = (model / "tokenizer.json").read_text()
    (model / "tokenizer.json").write_text(text[: len(text) // 2])
    (model / "config.json").write_bytes(b'{\n  "model_type": "\xff"\n}')
    problems = check_model_files(model, roots(root), parse=True)
    assert any("tokenizer.json is not valid JSON (line" in p and "looks truncated" in p for p in problems)
    assert any("config.json is not UTF-8 text: line 2, column 18" in p for p in problems)
    found = bad_file_behind(model, roots(root), ("tokenizer.json",))
    assert found is not None and found.path.endswith("tokenizer.json")


def test_a_truncated_tokenizer_json_fails_the_load_naming_the_file(model: Path, root: Path) -> None:
    from worker.model.load import ModelLoadError, load_tokenizer
    from worker.spec.job import JobSpec

    text = (model / "tokenizer.json").read_text()
    (model / "tokenizer.json").write_text(text[: len(text) // 2])
    spec = JobSpec(model_name_or_path=str(model), dataset="x")
    with pytest.raises(ModelLoadError, match=r"tokenizer.json is not valid JSON \(line \d+, column \d+\)"):
        load_tokenizer(spec, roots(root))


def test_the_worker_refuses_remote_code_the_daemon_did_not_allow(tmp_path: Path, model: Path, root: Path) -> None:
    from worker.run.validate import read_and_validate

    data = root / "in/data"
    shutil.copytree(REPO / "configs/data", data)
    spec = {"model_name_or_path": str(model), "dataset": "cs_billing", "dataset_dir": str(data)}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "spec.json").write_text(json.dumps({**spec, "trust_remote_code": True}))
    allowed = worker_settings([root / "in"], allow_remote_code=True)
    assert read_and_validate(run_dir, allowed)[1] == []
    _, problems = read_and_validate(run_dir, worker_settings([root / "in"], allow_remote_code=False))
    assert len(problems) == 1 and "FTQ_ALLOW_REMOTE_CODE=1" in problems[0]
    assert "runs the Python files of the model directory as the daemon's user" in problems[0]
    # And the spec's files are checked against the input dirs it was given, every problem at once.
    (run_dir / "spec.json").write_text(json.dumps(spec))
    _, problems = read_and_validate(run_dir, worker_settings([root / "out"], allow_remote_code=False))
    assert any(p.startswith("model_name_or_path:") and "outside" in p for p in problems)
    assert any("dataset_info.json leads outside" in p for p in problems)
