"""A job's notes: every key accepted without effect, with why, and where ftq differs from LLaMA-Factory."""

from __future__ import annotations

from server.notes import spec_notes
from worker.spec import JobSpec


def notes(**fields) -> list[str]:
    spec = JobSpec(model_name_or_path="m", dataset="d", **fields)
    return spec_notes(spec.model_dump(mode="json", exclude_none=True))


def test_each_key_without_effect_is_named_with_its_reason_and_never_a_secret():
    found = "\n".join(notes(plot_loss=True, report_to="wandb", hub_token="hf_abc", template="qwen"))
    assert "plot_loss: True is accepted without effect: ftq does not draw loss plots" in found
    assert "report_to: 'wandb'" in found and "hub_token: (hidden)" in found and "hf_abc" not in found


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
