"""The CLI's pure parts: reading job files with overrides, and the jobs table."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.cli.main import jobs_table, load_spec
from tests.helpers import REPO


def test_yaml_job_files_with_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: cs-billing\ngpus: 1\nlearning_rate: 1.0e-4\n")
    spec = load_spec(path, ["gpus=0", "learning_rate=2.0e-3", "lora_target=q_proj,v_proj"])
    assert spec == {"name": "cs-billing", "gpus": 0, "learning_rate": 2e-3, "lora_target": "q_proj,v_proj"}


def test_bad_job_files_and_overrides_say_what_is_wrong(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("- a list\n")
    with pytest.raises(SystemExit, match="must hold a mapping"):
        load_spec(path, [])
    path.write_text("name: x\n")
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        load_spec(path, ["gpus"])
    with pytest.raises(SystemExit, match="cannot read"):
        load_spec(tmp_path / "missing.yaml", [])


def test_jobs_table_shows_where_and_how_far():
    table = jobs_table(
        [
            {
                "id": 1,
                "name": "a",
                "state": "running",
                "cuda_visible_devices": "0,1",
                "progress": {"current_steps": 5, "total_steps": 96},
                "loss": 7.25,
            },
            {"id": 2, "name": "b", "state": "running", "cuda_visible_devices": "", "progress": None, "loss": None},
            {
                "id": 3,
                "name": "c",
                "state": "failed",
                "cuda_visible_devices": None,
                "progress": None,
                "loss": None,
                "reason": "bad input: dataset 'x'",
            },
        ]
    ).splitlines()
    assert table[0].split() == ["ID", "NAME", "STATE", "GPU", "STEP", "LOSS", "REASON"]
    assert table[1].split() == ["1", "a", "running", "0,1", "5/96", "7.2500"]
    assert table[2].split()[3] == "cpu"
    assert table[3].endswith("bad input: dataset 'x'")


def test_a_stalled_job_says_so_in_the_table():
    job = {"id": 3, "name": "quiet", "state": "running", "cuda_visible_devices": "0", "stalled_for_s": 93.4}
    assert "stalled? no record for 93 s" in jobs_table([job])


def test_the_demos_reopen_hint_names_an_ftq_that_exists(monkeypatch):
    from server.cli.demo import reopen_hint

    monkeypatch.chdir(REPO)
    hint = reopen_hint(Path("ftq-data"))
    command = hint.split("FTQ_DATA_DIR=ftq-data ", 1)[1].split(" serve --port 8000`", 1)[0]
    assert command == ".venv/bin/ftq" and (REPO / command).is_file(), (
        hint
    )  # make run's .venv/bin/ftq need not be on PATH
