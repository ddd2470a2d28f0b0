"""Spec paths: resolved against the daemon's input dirs, and never outside them."""

from __future__ import annotations

import json

import pytest

from server.errors import InvalidSpec
from server.paths import resolve_spec_paths
from worker.spec import JobSpec


@pytest.fixture
def root(tmp_path):
    (tmp_path / "models/tiny").mkdir(parents=True)
    (tmp_path / "models/tiny/config.json").write_text("{}")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/a.jsonl").write_text("{}\n")
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
