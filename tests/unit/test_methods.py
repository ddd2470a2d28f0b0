"""The method keys on the shipped tiny model, in-process: which parameters train, and what reaches peft."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, MixtralConfig, TrainingArguments

from worker.model.adapters import freeze_patterns, setup_method
from worker.model.kernels import configure_moe, upcast_layernorm, upcast_lmhead_output
from worker.model.load import load_model
from worker.model.quantize import bnb_config, is_quantized, quantization_kwargs
from worker.run.loraplus import LoraPlus
from worker.run.resume import ResumingTrainer
from worker.spec.job import JobSpec
from worker.spec.methods import MethodError

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "models" / "tiny-chat"
LAYER_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                 "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")  # fmt: skip

# additional_target "norm" as peft's modules_to_save reads it: every module whose name holds it trains in full.
NORMS_SAVED = [
    f"base_model.model.model.{name}.modules_to_save.default.weight"
    for name in ("layers.0.input_layernorm", "layers.0.post_attention_layernorm", "layers.1.input_layernorm",
                 "layers.1.post_attention_layernorm", "norm")
]  # fmt: skip

if not (TINY / "config.json").is_file():
    pytest.skip("the shipped tiny model is missing", allow_module_level=True)


def spec(**fields: Any) -> JobSpec:
    return JobSpec(model_name_or_path=str(TINY), dataset="cs_billing", gpus=0, **fields)


def trainable(model: torch.nn.Module) -> list[str]:
    return [name for name, param in model.named_parameters() if param.requires_grad]


def layer(index: int, *modules: str) -> list[str]:
    return [f"model.layers.{index}.{module}.weight" for module in modules or LAYER_MODULES]


def tiny(dtype: torch.dtype = torch.float32) -> Any:
    return AutoModelForCausalLM.from_pretrained(str(TINY), dtype=dtype)


# ---- freeze: LLaMA-Factory's _setup_freeze_tuning ----


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (dict(), layer(0) + layer(1)),  # the default: the last 2 layers, here both
        (dict(freeze_trainable_layers=1), layer(1)),
        (dict(freeze_trainable_layers=-1), layer(0)),
        (dict(freeze_trainable_layers=5), layer(0) + layer(1)),
        (dict(freeze_trainable_layers=1, freeze_trainable_modules="mlp"),
         layer(1, "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")),
        (dict(freeze_trainable_layers=-1, freeze_trainable_modules="self_attn,input_layernorm",
              freeze_extra_modules="embed_tokens"),
         ["model.embed_tokens.weight"] + layer(0, "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                               "self_attn.o_proj", "input_layernorm")),
        # LLaMA-Factory matches the names as substrings: "norm" also picks every layer's norms
        (dict(freeze_trainable_layers=0, freeze_extra_modules="norm"),
         layer(0, "input_layernorm", "post_attention_layernorm") + layer(1, "input_layernorm",
                                                                           "post_attention_layernorm")
         + ["model.norm.weight"]),
    ],
)  # fmt: skip
def test_freeze_trains_exactly_the_layers_and_modules_llama_factory_picks(fields: dict, expected: list[str]) -> None:
    model = setup_method(tiny(), spec(finetuning_type="freeze", **fields), cast_fp32=True, quantized=False,
                         zero3=False, roots=None)  # fmt: skip
    assert trainable(model) == expected


def test_freeze_names_the_modules_the_model_has_when_one_is_unknown() -> None:
    names = [name for name, _ in tiny().named_parameters()]
    with pytest.raises(MethodError, match="'attn' is not a module of the model's layers; choose from "
                       "input_layernorm, mlp, post_attention_layernorm, self_attn"):  # fmt: skip
        freeze_patterns(names, 2, spec(finetuning_type="freeze", freeze_trainable_modules="mlp,attn"))
    with pytest.raises(MethodError, match="'lm_head' is not a module outside the layers; choose from embed_tokens"):
        freeze_patterns(names, 2, spec(finetuning_type="freeze", freeze_extra_modules="lm_head"))


def test_freeze_casts_what_trains_to_float32_unless_pure_bf16() -> None:
    model = setup_method(tiny(torch.bfloat16), spec(finetuning_type="freeze", freeze_trainable_layers=1),
                         cast_fp32=True, quantized=False, zero3=False, roots=None)  # fmt: skip
    dtypes = {name: param.dtype for name, param in model.named_parameters()}
    assert {dtypes[name] for name in layer(1)} == {torch.float32}
    assert {dtypes[name] for name in layer(0)} == {torch.bfloat16}
    kept = setup_method(tiny(torch.bfloat16), spec(finetuning_type="freeze", pure_bf16=True), cast_fp32=False,
                        quantized=False, zero3=False, roots=None)  # fmt: skip
    assert {p.dtype for p in kept.parameters()} == {torch.bfloat16}


# ---- LoRA variants and OFT: what reaches peft ----


def test_oft_reaches_peft_with_its_rank_block_size_dropout_and_every_linear_layer_but_lm_head() -> None:
    model = load_model(spec(finetuning_type="oft", oft_block_size=16, module_dropout=0.1,
                            additional_target="norm"), cuda=False)  # fmt: skip
    config = model.peft_config["default"]
    assert type(config).__name__ == "OFTConfig"
    assert (config.r, config.oft_block_size, config.module_dropout) == (0, 16, 0.1)
    assert len(config.target_modules) == 14 and "lm_head" not in config.target_modules  # peft spells "all-linear" out
    assert {name.split(".")[-1] for name in config.target_modules} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert config.modules_to_save == ["norm"]
    names = trainable(model)
    assert sum("oft_R" in name for name in names) == 14
    assert [name for name in names if "oft_R" not in name] == NORMS_SAVED


def test_dora_rslora_and_additional_target_reach_lora_config() -> None:
    model = load_model(spec(lora_rank=4, lora_alpha=8, use_dora=True, use_rslora=True,
                            additional_target="norm"), cuda=False)  # fmt: skip
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.use_dora, config.use_rslora) == (4, 8, True, True)
    assert config.modules_to_save == ["norm"] and config.init_lora_weights is True
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.scaling["default"] == pytest.approx(8 / math.sqrt(4))  # rsLoRA: alpha / sqrt(r)
    names = trainable(model)
    assert sum("lora_magnitude_vector" in name for name in names) == 14  # DoRA's magnitudes, one per linear layer
    assert [name for name in names if "lora_" not in name] == NORMS_SAVED


@pytest.mark.parametrize(("pissa_iter", "init"), [(-1, "pissa"), (4, "pissa_niter_4")])
def test_pissa_initializes_from_the_weights_svd(pissa_iter: int, init: str) -> None:
    model = load_model(spec(pissa_init=True, pissa_iter=pissa_iter, lora_target="q_proj"), cuda=False)
    assert model.peft_config["default"].init_lora_weights == init
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.lora_B["default"].weight.abs().sum() > 0  # plain LoRA starts B at zero; PiSSA does not


def test_loraplus_puts_the_b_matrices_at_learning_rate_times_the_ratio(tmp_path: Path) -> None:
    model = load_model(spec(loraplus_lr_ratio=16.0, loraplus_lr_embedding=1e-5), cuda=False)
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.1, use_cpu=True,
                             report_to="none")  # fmt: skip
    trainer = ResumingTrainer(model=model, args=args, loraplus=LoraPlus.of(spec(loraplus_lr_ratio=16.0)))
    optimizer = trainer.create_optimizer()
    names = {id(param): name for name, param in model.named_parameters()}
    groups = [(g["lr"], g["weight_decay"], sorted(names[id(p)] for p in g["params"])) for g in optimizer.param_groups]
    (a_lr, a_decay, a), (_, _, embedding), (b_lr, b_decay, b), (_, _, b_no_decay) = groups
    assert a_lr == 1e-3 and a_decay == 0.1 and len(a) == 14 and all("lora_A" in name for name in a)
    assert b_lr == pytest.approx(16e-3) and b_decay == 0.1 and len(b) == 14 and all("lora_B" in name for name in b)
    assert embedding == [] and b_no_decay == []
    assert type(optimizer).__name__ == "AdamW"
    assert LoraPlus.of(spec()) is None


# ---- adapter_name_or_path ----


def save_adapter(path: Path, seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    """A LoRA adapter on the tiny model with non-zero B (so merging it changes the weights); its q_proj delta."""
    torch.manual_seed(seed)
    peft = get_peft_model(tiny(), LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj"],
                                             init_lora_weights=False))  # fmt: skip
    peft.save_pretrained(str(path))
    q_proj = peft.base_model.model.model.layers[0].self_attn.q_proj
    return {"delta": q_proj.get_delta_weight("default").detach().clone(), "B": q_proj.lora_B["default"].weight.clone()}


def q_proj_weight(model: Any) -> torch.Tensor:
    return model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight


def test_the_last_adapter_trains_on_and_the_ones_before_are_merged(tmp_path: Path) -> None:
    first, last = save_adapter(tmp_path / "a1", seed=1), save_adapter(tmp_path / "a2", seed=2, rank=2)
    base = tiny().model.layers[0].self_attn.q_proj.weight.detach()

    model = load_model(spec(adapter_name_or_path=f"{tmp_path / 'a1'},{tmp_path / 'a2'}", lora_rank=8), cuda=False)

    assert torch.allclose(q_proj_weight(model), base + first["delta"], atol=1e-6)  # a1 merged in
    assert model.peft_config["default"].r == 2  # a2's own rank, not lora_rank
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj
    assert torch.equal(q_proj.lora_B["default"].weight, last["B"]) and q_proj.lora_B["default"].weight.requires_grad
    assert all("q_proj.lora_" in name for name in trainable(model))


def test_create_new_adapter_merges_every_adapter_and_trains_a_fresh_one(tmp_path: Path) -> None:
    only = save_adapter(tmp_path / "a1", seed=1)
    base = tiny().model.layers[0].self_attn.q_proj.weight.detach()

    model = load_model(spec(adapter_name_or_path=str(tmp_path / "a1"), create_new_adapter=True, lora_rank=8),
                       cuda=False)  # fmt: skip

    assert torch.allclose(q_proj_weight(model), base + only["delta"], atol=1e-6)
    assert model.peft_config["default"].r == 8
    assert model.get_base_model().model.layers[0].self_attn.q_proj.lora_B["default"].weight.abs().sum() == 0
    assert len(trainable(model)) == 28  # lora_target all: 7 linear layers x 2 layers x (A, B)


def test_a_quantized_model_takes_one_adapter_without_merging(tmp_path: Path) -> None:
    save_adapter(tmp_path / "a1", seed=1)
    save_adapter(tmp_path / "a2", seed=2)
    two = spec(adapter_name_or_path=f"{tmp_path / 'a1'},{tmp_path / 'a2'}")
    with pytest.raises(MethodError, match="a quantized model takes a single adapter; merge them first"):
        setup_method(tiny(), two, cast_fp32=True, quantized=True, zero3=False, roots=None)
    with pytest.raises(MethodError, match="DeepSpeed ZeRO-3 takes a single adapter"):
        setup_method(tiny(), two, cast_fp32=False, quantized=False, zero3=True, roots=None)


def test_an_adapter_directory_without_adapter_config_is_bad_input(tmp_path: Path) -> None:
    from worker.model.adapters import AdapterLoadError

    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterLoadError, match="has no adapter_config.json: not a peft adapter"):
        load_model(spec(adapter_name_or_path=str(tmp_path / "empty")), cuda=False)


# ---- attention and kernels ----


@pytest.mark.parametrize(
    ("flash_attn", "padding_free", "implementation"),
    [("disabled", False, "eager"), ("sdpa", False, "sdpa"), ("disabled", True, "eager"), ("sdpa", True, "ftq_packed"),
     ("auto", True, "ftq_packed")],
)  # fmt: skip
def test_flash_attn_picks_the_attention_implementation(flash_attn: str, padding_free: bool, implementation: str):
    # Padding-free rows attend per example with SDPA (worker.model.packed_attention); eager asked by name stays eager.
    job = spec(flash_attn=flash_attn, finetuning_type="full", padding_free=padding_free)
    model = load_model(job, cuda=False)
    assert model.config._attn_implementation == implementation
    assert model.config.use_cache is (not padding_free)


def test_upcast_layernorm_puts_the_norms_in_float32_and_nothing_else() -> None:
    model = tiny(torch.bfloat16)
    cast = upcast_layernorm(model)
    assert cast == ["model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
                    "model.layers.1.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight",
                    "model.norm.weight"]  # fmt: skip
    assert {p.dtype for n, p in model.named_parameters() if n not in cast} == {torch.bfloat16}


def test_upcast_lmhead_output_hooks_the_head_so_the_logits_are_float32() -> None:
    model = tiny(torch.bfloat16)
    ids = torch.tensor([[1, 2, 3]])
    assert model(input_ids=ids).logits.dtype == torch.bfloat16
    assert upcast_lmhead_output(model) is True
    assert model(input_ids=ids).logits.dtype == torch.float32
    assert upcast_lmhead_output(tiny()) is False  # already float32: no hook


def test_moe_aux_loss_coef_reaches_a_config_with_a_router_and_no_other() -> None:
    mixtral = MixtralConfig(num_hidden_layers=1)
    assert configure_moe(mixtral, 0.01) == ["router_aux_loss_coef=0.01", "output_router_logits=True"]
    assert mixtral.router_aux_loss_coef == 0.01 and mixtral.output_router_logits is True
    llama = LlamaConfig(num_hidden_layers=1)
    assert configure_moe(llama, 0.01) == [] and not hasattr(llama, "router_aux_loss_coef")
    assert configure_moe(MixtralConfig(), None) == []


# ---- QLoRA and pre-quantized checkpoints: the arguments, without a GPU ----


def test_qlora_4_bit_config_carries_the_quantization_keys() -> None:
    config = bnb_config(spec(quantization_bit=4, quantization_type="fp4", double_quantization=False), torch.bfloat16)
    assert config.load_in_4bit and not config.load_in_8bit
    assert (config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant) == ("fp4", False)
    assert config.bnb_4bit_compute_dtype == torch.bfloat16 and config.bnb_4bit_quant_storage == torch.bfloat16
    eight = bnb_config(spec(quantization_bit=8), torch.float16)
    assert eight.load_in_8bit and not eight.load_in_4bit


def test_quantization_kwargs_for_on_the_fly_and_pre_quantized_checkpoints() -> None:
    plain = SimpleNamespace(quantization_config=None)
    kwargs = quantization_kwargs(spec(quantization_bit=4), plain, torch.float16, zero3=False)
    assert kwargs["quantization_config"].load_in_4bit and "device_map" not in kwargs  # no CUDA here
    assert is_quantized(spec(quantization_bit=4), plain) and not is_quantized(spec(), plain)
    assert quantization_kwargs(spec(), plain, torch.float32, zero3=False) == {}
    with pytest.raises(ValueError, match="ZeRO-3 takes 4-bit QLoRA only"):
        quantization_kwargs(spec(quantization_bit=8), plain, torch.float16, zero3=True)

    gptq = SimpleNamespace(quantization_config={"quant_method": "gptq", "bits": 4, "disable_exllama": True})
    assert quantization_kwargs(spec(quantization_bit=8), gptq, torch.float16, zero3=False) == {}
    assert gptq.quantization_config == {"quant_method": "gptq", "bits": 4, "use_exllama": False}
    with pytest.raises(ValueError, match=r"ZeRO-3 cannot train a pre-quantized \(gptq\) checkpoint"):
        quantization_kwargs(spec(), gptq, torch.float16, zero3=True)
    fp8 = SimpleNamespace(quantization_config={"quant_method": "fp8"})
    assert quantization_kwargs(spec(), fp8, torch.bfloat16, zero3=False)["quantization_config"].dequantize is True
    assert not is_quantized(spec(), fp8) and is_quantized(spec(), gptq)
