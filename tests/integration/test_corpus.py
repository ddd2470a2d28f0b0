"""The corpus: LLaMA-Factory-style job files, one per method and data feature, each trains or is refused at submit.

Each file in tests/corpus/ says in its header what must happen to it
(`# expect: trains`, or `# expect: refused FIELD …`: a 422 whose errors name
each of those fields, all in one answer). They are submitted the way a user
submits them: read as `ftq submit` reads them, with their relative paths
resolved against a directory laid out like a LLaMA-Factory checkout
(tests/integration/lf_checkout.py), to one real daemon with two CPU slots; the
ones that are accepted train the tiny model for two steps in real workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.cli.main import load_spec
from server.cli.paths import absolute_paths
from tests.helpers import REPO, wait_for
from tests.integration import lf_checkout
from tests.integration.daemon import Daemon

pytestmark = pytest.mark.integration

CORPUS = sorted((REPO / "tests/corpus").glob("*.yaml"))


def expectation(path: Path) -> tuple[str, set[str]]:
    line = next(line for line in path.read_text().splitlines() if line.startswith("# expect:"))
    words = line.removeprefix("# expect:").split()
    return words[0], set(words[1:])


class Corpus:
    """Every corpus file submitted once; the answers and the trained jobs' outcomes, for the tests to read."""

    def __init__(self, root: Path) -> None:
        self.checkout = lf_checkout.build(root / "llamafactory")
        (self.checkout / "saves").mkdir()
        outputs = root / "ftq/outputs"
        outputs.mkdir(parents=True)
        self.daemon = Daemon(
            root / "ftq",
            cpu_slots="2",
            input_dirs=str(self.checkout),
            output_dirs=os.pathsep.join([str(outputs), str(self.checkout / "saves")]),
        )
        self.outputs = outputs
        self.answers: dict[str, tuple[int, dict[str, Any]]] = {}
        self.ended: dict[str, dict[str, Any]] = {}

    def run(self) -> None:
        self.daemon.start()
        for path in CORPUS:
            spec = absolute_paths(load_spec(path, []), self.checkout)
            response = self.daemon.http.post("/jobs", json=spec)
            self.answers[path.stem] = (response.status_code, response.json())
        accepted = {name: body["id"] for name, (status, body) in self.answers.items() if status == 201}
        for name, job_id in accepted.items():
            self.ended[name] = wait_for(lambda job_id=job_id: self.daemon.ended(job_id), timeout=600, what=name)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    found = Corpus(tmp_path_factory.mktemp("corpus"))
    try:
        found.run()
        yield found
    finally:
        found.daemon.close()


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_each_file_trains_or_is_refused_as_its_header_says(corpus: Corpus, path: Path):
    outcome, fields = expectation(path)
    status, body = corpus.answers[path.stem]
    if outcome == "trains":
        assert status == 201, json.dumps(body, indent=2)
        job = corpus.ended[path.stem]
        log = corpus.daemon.http.get(f"/jobs/{job['id']}/logs", params={"tail": 40}).text
        assert job["state"] == "succeeded", log
        assert job["result"] and Path(job["result"]).is_dir()
    else:
        assert status == 422, body
        named = {error["field"] for error in body["errors"]}
        assert fields <= named, f"expected errors on {sorted(fields)}, got: {json.dumps(body['errors'], indent=2)}"
        assert all(error["message"] for error in body["errors"])


def test_one_answer_names_every_problem_of_a_file(corpus: Corpus):
    _, body = corpus.answers["all_at_once"]
    messages = {error["field"]: error["message"] for error in body["errors"]}
    assert "did you mean lora_rank?" in messages["lora_rnak"]
    assert "BAdam" in messages["use_badam"]
    assert "nowhere" in messages["dataset"]
    assert "ds_z9_config.json" in messages["deepspeed"]
    assert "models/missing" in messages["model_name_or_path"]


def test_keys_without_effect_are_listed_in_the_notes(corpus: Corpus):
    notes = "\n".join(corpus.ended["lora_sft"]["notes"])
    assert "overwrite_cache" in notes
    assert "plot_loss" not in notes and "report_to" not in notes  # honoured; report_to: none asks for nothing
    assert "resume_from_checkpoint" not in notes  # null is LLaMA-Factory's default: it asks for nothing


def test_output_dir_gets_the_adapter_inside_the_output_dirs(corpus: Corpus):
    job = corpus.ended["lora_sft"]
    published = corpus.outputs / "saves/tiny/lora/sft"
    assert job["result"] == str(published)
    assert (published / "adapter_model.safetensors").is_file() and (published / "adapter_config.json").is_file()
    # plot_loss: true, as LLaMA-Factory's example has it: the loss plot beside the adapter (no eval: no eval plot)
    assert (published / "training_loss.png").is_file() and not (published / "training_eval_loss.png").exists()
    assert any(str(published) in note for note in job["notes"])


def test_a_hub_id_is_told_how_to_make_a_local_copy(corpus: Corpus):
    _, body = corpus.answers["hub_model"]
    message = next(e["message"] for e in body["errors"] if e["field"] == "model_name_or_path")
    assert "huggingface-cli download Qwen/Qwen2.5-0.5B-Instruct --local-dir" in message
    assert str(corpus.checkout) in message  # the directories the daemon may read


def test_gpu_only_methods_say_so_for_a_cpu_slot(corpus: Corpus):
    for name, field in (("qlora_cpu", "quantization_bit"), ("liger_cpu", "enable_liger_kernel")):
        _, body = corpus.answers[name]
        message = next(e["message"] for e in body["errors"] if e["field"] == field)
        assert "GPU" in message, message


def test_ftq_submit_resolves_paths_against_the_directory_it_runs_in(corpus: Corpus):
    env = {**os.environ, "FTQ_URL": f"http://127.0.0.1:{corpus.daemon.port}", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "submit", str(REPO / "tests/corpus/lora_sft.yaml"), "--set", "name=cli"],
        cwd=corpus.checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "note: overwrite_cache" in done.stdout  # the notes reach the terminal
    job_id = int(done.stdout.split()[2])
    spec = corpus.daemon.job(job_id)["spec"]
    assert spec["model_name_or_path"] == str(corpus.checkout / "models/tiny-chat")
    assert spec["dataset_dir"] == str(corpus.checkout / "data")  # LLaMA-Factory's default, `data`, under the cwd
    corpus.daemon.http.post(f"/jobs/{job_id}/cancel")


def test_pissa_convert_saves_a_plain_lora_adapter_of_twice_the_rank(corpus: Corpus):
    config = json.loads((Path(corpus.ended["pissa"]["result"]) / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["init_lora_weights"] is True  # LoRA on the original base, rank 2 x 8
