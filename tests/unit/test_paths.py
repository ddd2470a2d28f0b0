"""Spec paths: resolved against the daemon's input dirs, never outside them, read safely and in bounded time."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import pytest

from server.api.errors import encodable
from server.services import bounded_check as paths
from server.services.bounded_check import Reading as _Reading
from server.services.bounded_check import bounded
from server.services.errors import InvalidSpec, Unavailable
from server.services.paths import check_spec_inputs, resolve_spec_paths
from tests.helpers import REPO, wait_for
from worker.spec.job import JobSpec

TINY = REPO / "configs/models/tiny-chat"


@pytest.fixture
def root(tmp_path):
    (tmp_path / "models/tiny").mkdir(parents=True)
    (tmp_path / "models/tiny/config.json").write_text("{}")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/a.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    info = {"a": {"file_name": "a.jsonl"}, "hub": {"hf_hub_url": "org/x"}, "up": {"file_name": "../secret.jsonl"}}
    (tmp_path / "data/dataset_info.json").write_text(json.dumps(info))
    (tmp_path / "secret.jsonl").write_text("{}\n")
    return tmp_path


def spec(**fields) -> JobSpec:
    return JobSpec(**{"model_name_or_path": "models/tiny", "dataset": "a", "dataset_dir": "data", **fields})


def errors(roots, **fields) -> dict[str, str]:
    with pytest.raises(InvalidSpec) as info:
        resolve_spec_paths(spec(**fields), roots)
    return {e["field"]: e["message"] for e in info.value.errors or []}


def test_relative_paths_resolve_against_the_first_input_dir(root):
    resolved = resolve_spec_paths(spec(), [root])
    assert resolved.model_name_or_path == str(root / "models/tiny")
    assert resolved.dataset_dir == str(root / "data")


def test_paths_outside_the_input_dirs_are_refused(root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    found = errors([root / "models", root / "data"], model_name_or_path=str(outside), dataset_dir="../x")
    assert "outside the directories" in found["model_name_or_path"] and "FTQ_INPUT_DIRS" in found["dataset_dir"]


def test_a_symlink_cannot_smuggle_a_path_out(root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "config.json").write_text("{}")
    (root / "models/link").symlink_to(outside)
    assert "outside" in errors([root], model_name_or_path="models/link")["model_name_or_path"]


def test_a_dataset_file_may_not_escape_its_dataset_dir(root):
    assert "escapes" in errors([root], dataset="up")["dataset"]


def test_every_problem_is_reported_at_once(root):
    found = errors([root], model_name_or_path="models", dataset="nope,hub")
    assert "no config.json" in found["model_name_or_path"]
    assert "hub datasets cannot be fetched" in found["dataset"] or "'nope' is not in" in found["dataset"]


def test_missing_dataset_info_says_what_is_needed(root):
    (root / "empty").mkdir()
    assert "dataset_info.json" in errors([root], dataset_dir="empty")["dataset_dir"]


# ---- names no file can have, files that are not files, files too large, files cut short ----


def test_nul_bytes_long_names_and_symlink_loops_are_422s_naming_each_field(root):
    (root / "loop1").symlink_to(root / "loop2")
    (root / "loop2").symlink_to(root / "loop1")
    # The spec refuses NUL bytes and names beyond PATH_MAX itself (tests/unit/test_spec.py); the path check
    # stands behind it for paths that never passed through a spec (a file_name in dataset_info.json).
    unchecked = JobSpec.model_construct(
        **{**spec().model_dump(), "model_name_or_path": "models/\x00tiny", "dataset_dir": "d" * 5000}
    ).model_copy(update={"deepspeed": "loop1", "gpus": 1})
    with pytest.raises(InvalidSpec) as info:
        resolve_spec_paths(unchecked, [root])
    found = {e["field"]: e["message"] for e in info.value.errors or []}
    assert "NUL byte" in found["model_name_or_path"]
    assert "too long a name" in found["dataset_dir"] and len(found["dataset_dir"]) < 600
    assert "symlink loop" in found["deepspeed"]
    assert "symlink loop" in errors([root], model_name_or_path="loop1")["model_name_or_path"]


def test_a_dataset_name_that_is_not_utf8_still_makes_an_answer_that_can_be_sent(root):
    (root / "data/dataset_info.json").write_text('{"\\ud800": {"file_name": "a.jsonl"}}')
    found = errors([root], dataset="nope")
    assert "'nope' is not in" in found["dataset"]
    body = encodable({"detail": "x", "errors": [{"field": "dataset", "message": found["dataset"]}]})
    assert "\\ud800" in json.dumps(body, ensure_ascii=False).encode("utf-8").decode()


def test_a_fifo_as_deepspeed_is_refused_at_once(root):
    os.mkfifo(root / "ds.json")
    done = threading.Event()
    found: dict[str, str] = {}

    def check() -> None:
        found.update(errors([root], deepspeed="ds.json"))
        done.set()

    threading.Thread(target=check, daemon=True).start()
    assert done.wait(5), "the check blocked on the FIFO"
    assert "is a FIFO (named pipe), not a regular file" in found["deepspeed"]


def test_json_over_the_limit_or_not_utf8_is_named(root):
    with open(root / "ds.json", "wb") as big:  # 200 MiB on paper, nothing on disk
        big.write(b"\xff")
        big.truncate(200 << 20)
    (root / "models/tiny/config.json").write_bytes(b'{"hidden_size": 64,\n "name": "\xff"}')
    found = errors([root], deepspeed="ds.json")
    assert "200.0 MiB; the daemon reads at most 4.0 MiB" in found["deepspeed"]
    assert "config.json is not UTF-8 text: line 2, column 11" in found["model_name_or_path"]


def test_a_truncated_config_json_is_refused_rather_than_admitted_without_an_estimate(root):
    (root / "models/tiny/config.json").write_text('{"hidden_size": 64, "num_hidden_')
    message = errors([root])["model_name_or_path"]
    assert "config.json is not valid JSON (line 1" in message and "looks truncated" in message


def test_weights_linked_out_or_truncated_are_refused_at_submit(root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    shutil.copy(TINY / "model.safetensors", outside / "model.safetensors")
    (root / "models/tiny/model.safetensors").symlink_to(outside / "model.safetensors")
    assert "model.safetensors leads outside" in errors([root])["model_name_or_path"]
    (root / "models/tiny/model.safetensors").unlink()
    with open(outside / "model.safetensors", "r+b") as weights:
        weights.truncate(100_000)
    shutil.copy(outside / "model.safetensors", root / "models/tiny/model.safetensors")
    assert "model.safetensors is truncated" in errors([root])["model_name_or_path"]


def test_a_dataset_directory_whose_file_links_out_is_refused(root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.jsonl").write_text("{}\n")
    (root / "data/shards").mkdir()
    (root / "data/shards/a.jsonl").write_text("{}\n")
    (root / "data/shards/b.jsonl").symlink_to(outside / "secret.jsonl")
    info = json.loads((root / "data/dataset_info.json").read_text())
    (root / "data/dataset_info.json").write_text(json.dumps({**info, "s": {"file_name": "shards"}}))
    message = errors([root], dataset="s")["dataset"]
    assert "'s'" in message and "shards/b.jsonl leads outside" in message


def test_the_spec_and_the_json_read_for_its_estimate_come_back_together(root):
    (root / "ds.json").write_text('{"zero_optimization": {"stage": 3}}')
    resolved, files = check_spec_inputs(spec(deepspeed="ds.json", gpus=1), [root])
    assert resolved.deepspeed == str(root / "ds.json")
    assert files.model_config == {} and files.deepspeed_config == {"zero_optimization": {"stage": 3}}


# ---- a filesystem that does not answer holds a thread, not the request ----


def test_a_check_that_does_not_finish_in_time_names_the_path_it_was_on():
    release = threading.Event()
    reading = _Reading()

    def stuck() -> None:
        reading.at("deepspeed", "/mnt/nfs/ds.json")
        release.wait(10)

    started = time.monotonic()
    with pytest.raises(InvalidSpec) as info:
        bounded(stuck, 0.3, reading)
    release.set()
    assert time.monotonic() - started < 2
    (error,) = info.value.errors or []
    assert error["field"] == "deepspeed" and "reading /mnt/nfs/ds.json took longer than 0.3 s" in error["message"]


def test_when_every_check_is_stuck_the_next_request_is_told_to_come_back(monkeypatch):
    monkeypatch.setattr(paths, "_checks", threading.BoundedSemaphore(1))
    release = threading.Event()
    with pytest.raises(InvalidSpec):
        bounded(lambda: release.wait(10), 0.2, _Reading())
    with pytest.raises(Unavailable, match="still waiting on the filesystem"):
        bounded(lambda: None, 0.2, _Reading())
    release.set()
    assert wait_for(lambda: bounded(lambda: "ok", 1, _Reading()) == "ok", timeout=5)
