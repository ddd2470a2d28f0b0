"""LLaMA-Factory's own SFT example files (examples/ at v0.9.5, copied verbatim into tests/fixtures), submitted as a
new user would: model_name_or_path pointed at a local model and nothing else changed.

Each is accepted, or refused at submit in one answer whose errors name exactly
the keys this table says, each with its reason. The check is the daemon's own
(server.services.submission) on a machine with one 80 GiB GPU, with remote code allowed
(LLaMA-Factory's examples set trust_remote_code: true; allowing it is the
operator's call), from a directory laid out like LLaMA-Factory's checkout.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.gpus.fake import FakeProbe
from server.cli.main import load_spec
from server.cli.paths import absolute_paths
from server.services.errors import InvalidSpec
from server.services.machine import Machine
from server.services.submission import check_submission
from tests.helpers import REPO
from tests.integration import lf_checkout

pytestmark = pytest.mark.integration

EXAMPLES = REPO / "tests/fixtures/llamafactory_examples"
DEEPSPEED = "deepspeed"  # not installed where the tests run: refused with the install command
BNB = "quantization_bit"  # bitsandbytes is not installed where the tests run

# file -> the keys its 422 names (empty: accepted)
EXPECTED: dict[str, set[str]] = {
    "extras__adam_mini__qwen2_full_sft.yaml": {"use_adam_mini"},
    "extras__apollo__llama3_full_sft.yaml": {"use_apollo"},
    "extras__asft__llama2_full_asft.yaml": {"use_asft_loss", "dataset", DEEPSPEED},
    "extras__asft__qwen2_full_asft.yaml": {"use_asft_loss", "dataset", DEEPSPEED},
    "extras__badam__llama3_full_sft.yaml": {"use_badam"},
    "extras__dft__qwen2_full_sft.yaml": {"use_dft_loss"},
    "extras__eaft__qwen25_05b_eaft_full.yaml": {"use_eaft_loss"},
    "extras__fp8__llama3_fp8_deepspeed_sft.yaml": {"fp8", DEEPSPEED},
    "extras__fp8__llama3_fp8_fsdp_sft.yaml": {"fp8", "fsdp", "fsdp_transformer_layer_cls_to_wrap"},
    "extras__fsdp_qlora__llama3_lora_sft.yaml": {BNB},
    "extras__galore__llama3_full_sft.yaml": {"use_galore"},
    "extras__llama_pro__llama3_freeze_sft.yaml": {"use_llama_pro"},
    "extras__loraplus__llama3_lora_sft.yaml": set(),
    "extras__mod__llama3_full_sft.yaml": {"mixture_of_depths", "optim"},
    "extras__muon__qwen2_full_sft.yaml": {"use_muon"},
    "extras__nlg_eval__llama3_lora_predict.yaml": {
        "do_predict",
        "predict_with_generate",
        "adapter_name_or_path",
        "dataset",
    },
    "extras__oft__llama3_oft_sft.yaml": set(),
    "extras__oft__qwen2_5vl_oft_sft.yaml": {"dataset", "template"},
    "extras__pissa__llama3_lora_sft.yaml": set(),
    "extras__qoft__llama3_oft_sft_awq.yaml": set(),
    "extras__qoft__llama3_oft_sft_bnb_npu.yaml": {BNB},
    "extras__qoft__llama3_oft_sft_gptq.yaml": set(),
    "train_full__qwen3_full_sft.yaml": {DEEPSPEED},
    "train_full__qwen3vl_full_sft.yaml": {"dataset", "template", DEEPSPEED},
    "train_lora__qwen3_lora_dpo.yaml": {"stage", "dataset"},
    "train_lora__qwen3_lora_kto.yaml": {"stage", "dataset"},
    "train_lora__qwen3_lora_pretrain.yaml": {"stage", "dataset"},
    "train_lora__qwen3_lora_reward.yaml": {"stage", "dataset"},
    "train_lora__qwen3_lora_sft.yaml": set(),
    "train_lora__qwen3_lora_sft_ds3.yaml": {DEEPSPEED},
    "train_lora__qwen3_lora_sft_ray.yaml": {"dataset_dir"},
    "train_lora__qwen3_preprocess.yaml": set(),
    "train_lora__qwen3vl_lora_dpo.yaml": {"stage", "dataset", "template"},
    "train_lora__qwen3vl_lora_sft.yaml": {"dataset", "template"},
    "train_qlora__llama3_lora_sft_aqlm.yaml": set(),
    "train_qlora__llama3_lora_sft_awq.yaml": set(),
    "train_qlora__llama3_lora_sft_gptq.yaml": set(),
    "train_qlora__qwen3_lora_sft_bnb_npu.yaml": {BNB},
    "train_qlora__qwen3_lora_sft_otfq.yaml": {BNB},
}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = lf_checkout.build(tmp_path_factory.mktemp("examples") / "LLaMA-Factory")
    (root / "saves").mkdir()
    return root


def test_every_example_has_an_expectation():
    assert sorted(EXPECTED) == sorted(p.name for p in EXAMPLES.glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_an_example_is_accepted_or_refused_with_its_reasons_in_one_answer(checkout: Path, name: str):
    spec = {**load_spec(EXAMPLES / name, []), "model_name_or_path": "models/tiny-chat"}
    raw = absolute_paths(spec, checkout)
    machine = Machine(gpus=FakeProbe("1x80GiB").snapshot(), holders={}, cpu_slots=1, margin_bytes=2**30)
    outputs = [checkout / "saves", checkout.parent / "ftq-data"]
    outputs[1].mkdir(exist_ok=True)
    try:
        checked = check_submission(raw, [checkout], outputs, machine, allow_remote_code=True)
    except InvalidSpec as exc:
        named = {error["field"] for error in exc.errors or []}
        assert named == EXPECTED[name], "\n".join(f"{e['field']}: {e['message']}" for e in exc.errors or [])
        assert all(len(error["message"]) > 20 for error in exc.errors or [])  # a reason, not a bare "invalid"
        return
    assert EXPECTED[name] == set(), f"{name} was accepted"
    assert checked.spec.model_name_or_path == str(checkout / "models/tiny-chat")
