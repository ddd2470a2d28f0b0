"""What a job may read, through the real daemon: bad paths are 422s at submit, and files changed after
submit are bad input in the worker, named, never read outside FTQ_INPUT_DIRS; remote code is the operator's call."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, tiny_spec, wait_for
from tests.integration.conftest import attempt_pids
from tests.integration.daemon import Daemon, process_group_alive

pytestmark = pytest.mark.integration


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """The daemon's one input dir, with a copy of the tiny model and the demo data; beside it, a dir it may not read."""
    root = tmp_path / "inputs"
    shutil.copytree(REPO / "configs/models/tiny-chat", root / "models/tiny-chat")
    shutil.copytree(REPO / "configs/data", root / "data")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(REPO / "configs/data/cs_billing.jsonl", outside / "secret.jsonl")  # trainable, were it read
    return root


def model_copy(inputs: Path, name: str) -> Path:
    shutil.copytree(inputs / "models/tiny-chat", inputs / "models" / name)
    return inputs / "models" / name


def data_copy(inputs: Path, name: str) -> Path:
    shutil.copytree(inputs / "data", inputs / name)
    return inputs / name


def spec_in(inputs: Path, model: Path | None = None, data: Path | None = None, **overrides: Any) -> dict[str, Any]:
    return tiny_spec(
        model_name_or_path=str(model or inputs / "models/tiny-chat"),
        dataset_dir=str(data or inputs / "data"),
        **overrides,
    )


def stop_all(*daemons: Daemon) -> None:
    """Stop the daemons and every worker any of them started: none may outlive the test."""
    pids: list[int] = []
    for d in daemons:
        if d.proc is not None and d.proc.poll() is None:
            pids += attempt_pids(d)
            d.close()
    for pid in pids:
        if process_group_alive(pid):
            os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def confined(tmp_path: Path, inputs: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "ftq", fake_gpus="1x24GiB", input_dirs=str(inputs)).start()
    try:
        yield d
    finally:
        stop_all(d)


def field_errors(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.text
    found: dict[str, str] = {}
    for e in response.json()["errors"]:  # a field may have several problems: all of them, one per line
        found[e["field"]] = "\n".join(filter(None, [found.get(e["field"]), e["message"]]))
    return found


def test_bad_paths_are_422s_naming_the_field_and_the_file_and_the_api_keeps_answering(
    confined: Daemon, inputs: Path, tmp_path: Path
) -> None:
    post = confined.http.post

    # A FIFO as the DeepSpeed config: refused at once, without waiting for a writer that never comes.
    os.mkfifo(inputs / "ds.json")
    started = time.monotonic()
    answers: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: answers.update(fifo=post("/jobs", json=spec_in(inputs, deepspeed="ds.json")))
    )
    thread.start()
    assert confined.http.get("/healthz", timeout=5).status_code == 200
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 10
    assert "ds.json is a FIFO (named pipe), not a regular file" in field_errors(answers["fifo"])["deepspeed"]

    # Names no file can have (refused by the spec, both in one answer), and a symlink loop: a sentence each.
    found = field_errors(
        post("/jobs", json=spec_in(inputs, model=inputs / "models/\x00tiny", data=inputs / ("d" * 5000)))
    )
    assert "contains a NUL byte" in found["model_name_or_path"]
    assert "at most 4096 characters" in found["dataset_dir"] and len(found["dataset_dir"]) < 600
    (inputs / "loop").symlink_to(inputs / "loop")
    assert "symlink loop" in field_errors(post("/jobs", json=spec_in(inputs, deepspeed="loop")))["deepspeed"]

    # A dataset name that is a lone surrogate (valid JSON, not UTF-8) is echoed back escaped, not a 500.
    odd = data_copy(inputs, "odd-data")
    (odd / "dataset_info.json").write_text('{"\\ud800": {"file_name": "cs_billing.jsonl"}}')
    assert "(it has: \\ud800)" in field_errors(post("/jobs", json=spec_in(inputs, data=odd, dataset="nope")))["dataset"]

    # A 200 MiB "DeepSpeed config" (sparse, and not UTF-8) is not read at all.
    with open(inputs / "big.json", "wb") as big:
        big.write(b"\xff")
        big.truncate(200 << 20)
    assert (
        "200.0 MiB; the daemon reads at most 4.0 MiB"
        in field_errors(post("/jobs", json=spec_in(inputs, deepspeed="big.json")))["deepspeed"]
    )

    # A config.json that is not UTF-8, or cut short: refused, instead of admitted with no estimate.
    latin1 = model_copy(inputs, "latin1")
    (latin1 / "config.json").write_bytes((latin1 / "config.json").read_bytes().replace(b'"llama"', b'"ll\xe4ma"'))
    message = field_errors(post("/jobs", json=spec_in(inputs, model=latin1)))["model_name_or_path"]
    assert f"{latin1}/config.json is not UTF-8 text: line" in message
    cut = model_copy(inputs, "cut-config")
    (cut / "config.json").write_text((cut / "config.json").read_text()[:100])
    message = field_errors(post("/jobs", json=spec_in(inputs, model=cut)))["model_name_or_path"]
    assert f"{cut}/config.json is not valid JSON (line" in message and "looks truncated" in message

    # Weights that are a symlink out of the input dirs, or truncated.
    linked = model_copy(inputs, "linked")
    (linked / "model.safetensors").rename(tmp_path / "outside/model.safetensors")
    (linked / "model.safetensors").symlink_to(tmp_path / "outside/model.safetensors")
    message = field_errors(post("/jobs", json=spec_in(inputs, model=linked)))["model_name_or_path"]
    assert f"{linked}/model.safetensors leads outside the directories this daemon may read" in message
    short = model_copy(inputs, "short-weights")
    with open(short / "model.safetensors", "r+b") as weights:
        weights.truncate(500_000)
    message = field_errors(post("/jobs", json=spec_in(inputs, model=short)))["model_name_or_path"]
    assert f"{short}/model.safetensors is truncated" in message and "the file has 500000 bytes" in message

    # A dataset that is a directory, one of whose files links out.
    data = data_copy(inputs, "shards-data")
    (data / "shards").mkdir()
    shutil.copy(data / "cs_billing.jsonl", data / "shards/a.jsonl")
    (data / "shards/b.jsonl").symlink_to(tmp_path / "outside/secret.jsonl")
    info = json.loads((data / "dataset_info.json").read_text())
    info["cs_shards"] = {**info["cs_billing"], "file_name": "shards"}
    (data / "dataset_info.json").write_text(json.dumps(info))
    message = field_errors(post("/jobs", json=spec_in(inputs, data=data, dataset="cs_shards")))["dataset"]
    assert f"{data}/shards/b.jsonl leads outside" in message

    # Remote code is the operator's call.
    message = field_errors(post("/jobs", json=spec_in(inputs, trust_remote_code=True)))["trust_remote_code"]
    assert "FTQ_ALLOW_REMOTE_CODE=1" in message and "as the daemon's user" in message
    estimate = post("/estimate", json=spec_in(inputs, trust_remote_code=True)).json()
    assert [p["field"] for p in estimate["problems"]] == ["trust_remote_code"]

    assert confined.http.get("/jobs").json()["count"] == 0
    assert confined.http.get("/healthz").status_code == 200


def test_files_changed_after_submit_are_bad_input_named_by_the_worker_and_remote_code_needs_the_daemon_now(
    tmp_path: Path, inputs: Path
) -> None:
    outside = tmp_path / "outside"
    first = Daemon(tmp_path / "ftq", fake_gpus="1x24GiB", input_dirs=str(inputs), allow_remote_code="1")
    second = Daemon(tmp_path / "ftq", fake_gpus="1x24GiB", input_dirs=str(inputs))
    try:
        first.start()
        # The one GPU is held, so that the jobs below wait in the queue while their files change.
        holder = first.submit(spec_in(inputs, name="holder", max_steps=100_000, per_device_train_batch_size=1))["id"]
        wait_for(lambda: first.job(holder)["state"] == "running", timeout=180, what="the holder to run")

        data = data_copy(inputs, "swapped-data")
        (data / "shards").mkdir()
        shutil.copy(data / "cs_billing.jsonl", data / "shards/a.jsonl")
        info = json.loads((data / "dataset_info.json").read_text())
        info["cs_shards"] = {**info["cs_billing"], "file_name": "shards"}
        (data / "dataset_info.json").write_text(json.dumps(info))
        swapped_data = first.submit(spec_in(inputs, name="swapped-data", data=data, dataset="cs_billing,cs_shards"))
        model = model_copy(inputs, "swapped-model")
        swapped_model = first.submit(spec_in(inputs, name="swapped-model", model=model, trust_remote_code=True))
        latin1 = data_copy(inputs, "latin1-data")
        lines = (latin1 / "cs_billing.jsonl").read_bytes().split(b"\n")
        lines[2] = lines[2].replace(b"a", b"\xe4", 1)
        (latin1 / "cs_billing.jsonl").write_bytes(b"\n".join(lines))
        not_utf8 = first.submit(spec_in(inputs, name="latin1", data=latin1))
        waiting = [swapped_data["id"], swapped_model["id"], not_utf8["id"]]
        assert [first.job(j)["state"] for j in waiting] == ["queued"] * 3

        # After the 201s: dataset_info.json points outside, a shard and the weights become links out, the
        # tokenizer is cut short.
        info["cs_billing"]["file_name"] = str(outside / "secret.jsonl")
        (data / "dataset_info.json").write_text(json.dumps(info))
        (data / "shards/b.jsonl").symlink_to(outside / "secret.jsonl")
        (model / "model.safetensors").rename(outside / "model.safetensors")
        (model / "model.safetensors").symlink_to(outside / "model.safetensors")
        text = (model / "tokenizer.json").read_text()
        (model / "tokenizer.json").write_text(text[: len(text) // 2])

        # The daemon restarts without FTQ_ALLOW_REMOTE_CODE; the queued job that asked for it must not run it.
        first.stop()
        second.start()
        second.http.post(f"/jobs/{holder}/cancel")
        for job_id in waiting:
            wait_for(lambda j=job_id: second.ended(j), timeout=300, what=f"job {job_id} to end")

        reasons = {j: second.job(j)["reason"] for j in waiting}
        assert all(second.job(j)["state"] == "failed" for j in waiting), reasons
        assert all(reason.startswith("bad input: ") for reason in reasons.values()), reasons
        reason = reasons[swapped_data["id"]]
        assert f"{outside}/secret.jsonl leads outside the directories this daemon may read" in reason
        assert f"{data}/shards/b.jsonl leads outside" in reason
        reason = reasons[swapped_model["id"]]
        assert f"{model}/model.safetensors leads outside" in reason
        assert f"{model}/tokenizer.json is not valid JSON (line" in reason
        assert "trust_remote_code is true, and this daemon does not allow remote code" in reason
        assert f"{latin1}/cs_billing.jsonl is not UTF-8 text: line 3," in reasons[not_utf8["id"]]
        assert not any(r["kind"] == "metric" for j in waiting for r in second.metrics(j))  # nothing trained

        requeue = second.http.post(f"/jobs/{swapped_model['id']}/requeue")
        assert "FTQ_ALLOW_REMOTE_CODE=1" in field_errors(requeue)["trust_remote_code"]
    finally:
        stop_all(first, second)
