"""Every key of LLaMA-Factory's SFT arguments and of transformers' training arguments has one fate."""

from __future__ import annotations

import ast
import dataclasses

import pytest

from configs.scripts.key_table import table
from tests.helpers import REPO
from worker.spec.job import JobSpec
from worker.spec.key_fates import ALIASES, REFUSED, WITHOUT_EFFECT, is_default, nearest
from worker.spec.passed import OPTIMIZERS, PASSED_KEYS

# LLaMA-Factory v0.9.5 (commit 7af909522a951e3ad9f022ea6f88b6755257eaa5): key -> default as its source writes it.
LF_KEYS = dict(
    line.split("\t", 1)
    for line in (REPO / "tests/fixtures/llamafactory_keys.tsv").read_text().splitlines()
    if line and not line.startswith("#")
)
FIELDS = set(JobSpec.model_fields)


def fates(key: str) -> list[str]:
    catalogs = (("field", FIELDS), ("alias", ALIASES), ("without effect", WITHOUT_EFFECT), ("refused", REFUSED))
    return [name for name, keys in catalogs if key in keys]


@pytest.mark.parametrize("key", sorted(LF_KEYS))
def test_every_llamafactory_key_has_exactly_one_fate(key):
    assert len(fates(key)) == 1, f"{key}: {fates(key) or 'no fate'}"


def test_every_transformers_training_argument_has_exactly_one_fate():
    from transformers import Seq2SeqTrainingArguments

    homeless = {f.name: fates(f.name) for f in dataclasses.fields(Seq2SeqTrainingArguments) if len(fates(f.name)) != 1}
    assert homeless == {}


def test_the_optimizer_names_are_transformers_own():
    from transformers.training_args import OptimizerNames

    assert set(OPTIMIZERS) == {name.value for name in OptimizerNames}


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        try:  # 768 * 768 and the like
            return eval(compile(ast.parse(text, mode="eval"), "<default>", "eval"), {"__builtins__": {}})  # noqa: S307
        except Exception:
            return NotImplemented


@pytest.mark.parametrize("key", sorted(k for k in LF_KEYS if k in WITHOUT_EFFECT or k in REFUSED))
def test_the_default_that_asks_for_nothing_is_llamafactorys(key):
    expected = _literal(LF_KEYS[key])
    if expected is NotImplemented:  # an enum member (EngineName.HF): checked by hand
        pytest.skip(f"{LF_KEYS[key]} is not a literal")
    assert is_default(key, expected), f"{key}: LLaMA-Factory's default is {expected!r}"


def test_honoured_fields_keep_llamafactorys_defaults_where_they_share_a_key():
    # ftq's own defaults differ on purpose for a few (documented in the README); everything else is LF's.
    differ_on_purpose = {"dataset", "model_name_or_path", "template", "overwrite_output_dir", "flash_attn",
                         "quantization_method", "disable_gradient_checkpointing", "enable_thinking"}  # fmt: skip
    for key, text in LF_KEYS.items():
        if key in FIELDS and key not in differ_on_purpose and key not in PASSED_KEYS:
            expected = _literal(text)
            if expected is not NotImplemented:
                actual = JobSpec.model_fields[key].get_default(call_default_factory=True)
                assert actual == expected, f"{key}: ftq's default {actual!r}, LLaMA-Factory's {expected!r}"


def test_a_default_is_met_by_the_same_value_only():
    assert is_default("use_badam", False) and not is_default("use_badam", 0) and not is_default("use_badam", True)
    assert is_default("pref_beta", 0.1) and is_default("export_size", 5) and not is_default("export_size", 6)


def test_a_misspelt_key_finds_its_neighbour():
    known = FIELDS | set(WITHOUT_EFFECT) | set(REFUSED)
    assert nearest("lora_rnak", known) == "lora_rank"
    assert nearest("learnig_rate", known) == "learning_rate"
    assert nearest("completely_unrelated_words", known) is None


def test_the_readme_table_is_the_catalog():
    assert table() in (REPO / "README.md").read_text(), "run `python -m configs.scripts.key_table` into the README"
