"""What ftq refuses of a dataset at submit (worker.preflight.dataset_info, worker.preflight.data_checks),
each naming dataset and column."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from datasets import Dataset

from tests.unit.data_helpers import OPENAI_ENTRY, chat, qa, write_dataset
from worker.preflight.confine import output_dirs_from_env, worker_settings
from worker.preflight.data_checks import data_problems, interleave_probs_problems, tokenized_path_problem
from worker.preflight.dataset_info import DataError, resolve_datasets

ALPACA = [{"instruction": "a", "input": "", "output": "b"}]


def refusal(tmp_path: Path, entry: dict, files: dict, name: str = "d") -> str:
    write_dataset(tmp_path, {name: entry}, files)
    with pytest.raises(DataError) as info:
        resolve_datasets([name], tmp_path, [str(tmp_path)])
    return str(info.value)


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ({"ranking": True, "formatting": "sharegpt"}, "'d' is preference data (ranking: true)"),
        ({"columns": {"prompt": "instruction", "response": "output", "chosen": "chosen", "rejected": "rejected"}},
         "'d' is preference data (column chosen ('chosen'), column rejected ('rejected'))"),
        ({"formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "label"}},
         "'d' is preference data (column kto_tag ('label'))"),
        ({"columns": {"prompt": "text"}}, "'d' maps a prompt column ('text') and no response column: that is "
         "pre-training text (LLaMA-Factory's stage pt, like its c4_demo entry)"),
        ({"formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"}},
         "'d' maps multimodal columns (images ('images')); ftq trains on text only"),
        ({"columns": {"prompt": "q", "response": "a", "videos": "v", "audios": "s"}},
         "multimodal columns (videos ('v'), audios ('s'))"),
        ({"formatting": "markdown"}, "'d': formatting 'markdown' is unknown (use alpaca or sharegpt)"),
        ({"formatting": "openai"}, "formatting 'openai' is not read by ftq yet"),
        ({"columns": ["prompt"]}, "'d': columns must be an object of names"),
        ({"num_samples": 10}, "'d': num_samples is not read by ftq yet; use max_samples"),
    ],
)  # fmt: skip
def test_entries_ftq_cannot_train_on_are_refused_naming_the_dataset_and_column(
    tmp_path: Path, entry: dict, said: str
) -> None:
    message = refusal(tmp_path, {"file_name": "d.jsonl", **entry}, {"d.jsonl": ALPACA})
    assert f"dataset {said}" in message or said in message


def test_llamafactory_pretraining_entry_c4_demo_is_refused(tmp_path: Path) -> None:
    # LLaMA-Factory's data/dataset_info.json, as it is: `columns: {prompt: text}`.
    message = refusal(tmp_path, {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}},
                      {"c4_demo.jsonl": [{"text": "a web page"}]}, name="c4_demo")  # fmt: skip
    assert "dataset 'c4_demo' maps a prompt column ('text') and no response column" in message


def test_hub_only_entries_are_still_refused(tmp_path: Path) -> None:
    assert "only on a hub (hf_hub_url='org/x'); this worker has no network" in refusal(
        tmp_path, {"hf_hub_url": "org/x"}, {}
    )


@pytest.mark.parametrize(
    ("files", "file_name", "said"),
    [
        ({"wiki.txt": "some text\n"}, "wiki.txt", "wiki.txt is plain text, which LLaMA-Factory reads as pre-training"),
        ({"d.xlsx": "x"}, "d.xlsx", "d.xlsx is not a file type LLaMA-Factory reads (json, jsonl, csv, parquet, arrow)"),
        ({"dir/a.jsonl": ALPACA, "dir/b.csv": "instruction,output\na,b\n"}, "dir",
         "holds json and csv files; a dataset directory holds files of one type"),
    ],
)  # fmt: skip
def test_file_types_ftq_cannot_read(tmp_path: Path, files: dict, file_name: str, said: str) -> None:
    assert said in refusal(tmp_path, {"file_name": file_name}, files)


def test_an_empty_dataset_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "'d': the directory" in refusal(tmp_path, {"file_name": "empty"}, {})


def test_first_rows_without_the_mapped_column_are_refused_naming_it_and_the_columns_there(tmp_path: Path) -> None:
    rows = [{"question": "a", "answer": "b"}]
    message = refusal(tmp_path, {"file_name": "d.jsonl"}, {"d.jsonl": rows})
    assert "d.jsonl has no column 'instruction' (the prompt column; it has: question, answer)" in message
    assert "d.jsonl has no column 'output' (the response column; it has: question, answer)" in message
    sharegpt = {"file_name": "s.json", "formatting": "sharegpt"}
    message = refusal(tmp_path, sharegpt, {"s.json": json.dumps([chat(("user", "a"), ("assistant", "b"))])})
    assert "s.json has no column 'conversations' (the messages column; it has: messages)" in message


@pytest.mark.parametrize("kind", ["csv", "parquet", "arrow"])
def test_tabular_files_are_peeked_by_their_header_or_schema(tmp_path: Path, kind: str) -> None:
    dataset = Dataset.from_list([{"question": "a", "output": "b", "images": "x.png"}])
    path = tmp_path / f"d.{kind}"
    if kind == "csv":
        dataset.to_csv(str(path), index=False)
    elif kind == "parquet":
        dataset.to_parquet(str(path))
    else:
        dataset.save_to_disk(str(tmp_path / "saved"))
        os.rename(next((tmp_path / "saved").glob("*.arrow")), path)
    message = refusal(tmp_path, {"file_name": path.name}, {})
    assert f"d.{kind} has no column 'instruction' (the prompt column; it has: question, output, images)" in message
    assert f"d.{kind} has multimodal columns (images)" in message


def test_a_media_column_counts_in_json_rows_only_when_filled(tmp_path: Path) -> None:
    rows = [{**qa(0), "images": []}, {**qa(1), "images": None}]
    write_dataset(tmp_path, {"cs": OPENAI_ENTRY}, {"chat.jsonl": rows})
    assert resolve_datasets(["cs"], tmp_path)[0].name == "cs"
    rows[1]["images"] = ["cat.png"]
    assert "chat.jsonl has multimodal columns (images)" in refusal(tmp_path, OPENAI_ENTRY, {"chat.jsonl": rows})


def test_the_peek_leaves_bad_bytes_and_bad_lines_to_the_worker_and_reads_at_most_its_bound(tmp_path: Path) -> None:
    good = json.dumps(qa(0))
    write_dataset(tmp_path, {"cs": OPENAI_ENTRY}, {})
    # Not UTF-8, a line that is not JSON, and a file far larger than the peek: none is a refusal at submit.
    (tmp_path / "chat.jsonl").write_bytes(b"\n".join([good.encode(), b"{oops", b'{"messages": "caf\xe9"}']
                                                     + [good.encode()] * 20_000))  # fmt: skip
    assert [a.name for a in resolve_datasets(["cs"], tmp_path, [str(tmp_path)])] == ["cs"]


def test_a_name_given_twice_is_refused(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"cs": OPENAI_ENTRY}, {"chat.jsonl": [qa(0)]})
    with pytest.raises(DataError, match="'cs' is named twice"):
        resolve_datasets(["cs", "cs"], tmp_path)


def test_every_problem_of_every_dataset_is_reported_at_once(tmp_path: Path) -> None:
    info = {
        "pt": {"file_name": "c4.jsonl", "columns": {"prompt": "text"}},
        "rm": {"file_name": "c4.jsonl", "ranking": True},
    }
    write_dataset(tmp_path, info, {"c4.jsonl": [{"text": "x"}]})
    with pytest.raises(DataError) as error:
        resolve_datasets(["pt", "rm", "nope"], tmp_path)
    assert all(f"'{name}'" in str(error.value) for name in ("pt", "rm", "nope"))


@pytest.mark.parametrize(
    ("probs", "counts", "said"),
    [
        ("0.5,0.5", {"dataset": 2}, None),
        ("0.333,0.333,0.334", {"dataset": 3}, None),
        ("0.5,0.5", {"dataset": 3}, "interleave_probs has 2 values and dataset names 3 datasets"),
        ("0.5,0.5", {"dataset": 2, "eval_dataset": 1}, "and eval_dataset names 1 datasets; give one per dataset "
         "(LLaMA-Factory mixes eval_dataset with the same probabilities)"),
        ("0.5,0.6", {"dataset": 2}, "interleave_probs sum to 1.1; they must sum to 1"),
        ("0.5,half", {"dataset": 2}, "interleave_probs: 'half' is not a number"),
        ("1.5,-0.5", {"dataset": 2}, "'-0.5' is not a probability"),
    ],
)  # fmt: skip
def test_interleave_probs(probs: str, counts: dict, said: str | None) -> None:
    problems = interleave_probs_problems(probs, counts)
    assert (problems == []) if said is None else any(said in p for p in problems), problems


def test_tokenized_path_must_lie_below_an_output_dir(tmp_path: Path) -> None:
    out, other = tmp_path / "out", tmp_path / "other"
    out.mkdir()
    other.mkdir()
    roots = [os.path.realpath(out)]
    assert tokenized_path_problem(str(out / "sets/faq"), roots) is None
    assert tokenized_path_problem("sets/faq", roots) is None  # relative: below the first output dir
    assert "must lie inside one of the daemon's output dirs" in tokenized_path_problem(str(other / "faq"), roots)
    assert "must lie inside" in tokenized_path_problem(str(out), roots)  # not the output dir itself
    (out / "link").symlink_to(other)
    assert "symlinks resolved" in tokenized_path_problem(str(out / "link/faq"), roots)
    assert "names no output dirs (FTQ_OUTPUT_DIRS)" in tokenized_path_problem(str(out / "faq"), [])
    assert tokenized_path_problem(str(other / "faq"), None) is None  # a worker run by hand


def test_output_dirs_from_env_never_means_anywhere_under_a_daemon(tmp_path: Path) -> None:
    assert output_dirs_from_env({}) is None  # run by hand
    assert output_dirs_from_env({"FTQ_INPUT_DIRS": str(tmp_path)}) == []  # a daemon that names none
    env = worker_settings([tmp_path], allow_remote_code=False, output_dirs=[tmp_path / "out"])
    assert output_dirs_from_env(env) == [os.path.realpath(tmp_path / "out")]


def test_data_problems_names_each_field(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"cs": OPENAI_ENTRY, "c4": {"file_name": "chat.jsonl", "columns": {"prompt": "text"}}},
                  {"chat.jsonl": [qa(0)]})  # fmt: skip
    fields = {"dataset": "cs", "eval_dataset": "c4", "dataset_dir": str(tmp_path), "interleave_probs": "1,0",
              "tokenized_path": "/elsewhere/set"}  # fmt: skip
    problems = dict(data_problems(fields, [str(tmp_path)], [str(tmp_path / "out")]))
    assert set(problems) == {"eval_dataset", "interleave_probs", "tokenized_path"}
    assert "'c4' maps a prompt column ('text')" in problems["eval_dataset"]
    assert "eval_dataset names 1 datasets" in problems["interleave_probs"]


def test_the_worker_validation_and_the_server_both_refuse(tmp_path: Path) -> None:
    from server.services.errors import InvalidSpec
    from server.services.paths import check_spec_inputs
    from tests.helpers import REPO
    from worker.run.validate import read_and_validate
    from worker.spec.job import JobSpec

    write_dataset(tmp_path / "data", {"cs": OPENAI_ENTRY, "prefs": {**OPENAI_ENTRY, "ranking": True}},
                  {"chat.jsonl": [qa(0)]})  # fmt: skip
    fields = {"model_name_or_path": str(REPO / "configs/models/tiny-chat"), "dataset": "cs", "eval_dataset": "prefs",
              "dataset_dir": str(tmp_path / "data"), "tokenized_path": str(tmp_path / "set")}  # fmt: skip
    with pytest.raises(InvalidSpec) as refused:
        check_spec_inputs(JobSpec(**fields), [REPO, tmp_path], output_roots=[tmp_path / "out"])
    found = {e["field"]: e["message"] for e in refused.value.errors or []}
    assert "'prefs' is preference data" in found["eval_dataset"]
    assert "must lie inside one of the daemon's output dirs" in found["tokenized_path"]

    (tmp_path / "run").mkdir()
    (tmp_path / "run/spec.json").write_text(json.dumps(fields))
    env = {"FTQ_INPUT_DIRS": os.pathsep.join([str(REPO), str(tmp_path)])}
    _, problems = read_and_validate(tmp_path / "run", env)
    assert any(p.startswith("eval_dataset: dataset 'prefs' is preference data") for p in problems), problems
    assert any("tokenized_path: this daemon names no output dirs" in p for p in problems), problems
