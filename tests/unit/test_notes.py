"""A job's notes: every key accepted without effect, with why, and where ftq differs from LLaMA-Factory."""

from __future__ import annotations

from server.services.notes import spec_notes
from worker.spec.job import JobSpec


def notes(**fields) -> list[str]:
    spec = JobSpec(model_name_or_path="m", dataset="d", **fields)
    return spec_notes(spec.model_dump(mode="json", exclude_none=True))


def test_each_key_without_effect_is_named_with_its_reason_and_never_a_secret():
    found = "\n".join(notes(temperature=0.3, report_to="wandb", hub_token="hf_abc", template="qwen"))
    assert "temperature: 0.3 is accepted without effect: used by LLaMA-Factory's inference" in found
    assert "report_to: 'wandb' is accepted without effect: ftq streams every metric itself" in found
    assert "hub_token: (hidden)" in found and "hf_abc" not in found


def test_what_ftq_runs_of_report_to_is_not_in_the_notes_and_the_rest_is():
    honoured = notes(plot_loss=True, report_to="tensorboard")
    assert not any("report_to" in note or "plot_loss" in note for note in honoured)
    (said,) = [note for note in notes(report_to=["tensorboard", "wandb", "mlflow"]) if "report_to" in note]
    assert said.startswith("report_to: ['wandb', 'mlflow'] is accepted without effect") and "tensorboard alone" in said


def test_the_template_and_checkpointing_defaults_are_said():
    assert any("tokenizer's own chat template" in note for note in notes())
    assert any("LLaMA-Factory turns it on" in note for note in notes(template="qwen"))
    assert not any("LLaMA-Factory turns it on" in note for note in notes(template="qwen", gradient_checkpointing=True))


def test_output_dir_says_where_the_result_goes():
    assert any("/out/sft" in note and "adapter" in note for note in notes(output_dir="/out/sft"))
    assert any("final model" in note for note in notes(output_dir="/out/full", finetuning_type="full"))


def test_packing_says_it_changes_the_samples_a_step_sees():
    assert any("attend to each other" in n and "more samples" in n for n in notes(packing=True))
    assert any(n.startswith("neat_packing:") and "inside each sample" in n for n in notes(neat_packing=True))
    assert not any("packed" in note for note in notes())
