"""The few numbers of a decoder-only transformer that decide its training memory, from its parsed config.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Module names peft matches in a Llama-style decoder block; "all" means every one.
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    """The few numbers of a decoder-only transformer that decide its memory."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    head_dim: int
    attention_bias: bool = False  # Qwen2 has q/k/v biases
    mlp_bias: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """Read a Llama/Qwen2/Mistral-style config.json (transformers 4 or 5; text_config nested)."""
        text = config.get("text_config")
        if isinstance(text, dict) and "hidden_size" not in config:
            config = {**config, **text}

        def positive(key: str, default: Any = None) -> int:
            value = default if config.get(key) is None else config[key]
            if value is None:
                raise ValueError(f"model config has no {key!r}; the memory estimate needs it")
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"model config {key!r} is {value!r}; expected a positive integer")
            return value

        hidden, heads = positive("hidden_size"), positive("num_attention_heads")
        return cls(
            hidden_size=hidden,
            num_hidden_layers=positive("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=positive("num_key_value_heads", heads),  # absent: no GQA
            intermediate_size=positive("intermediate_size"),
            vocab_size=positive("vocab_size"),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),  # Llama/Qwen2 class default
            head_dim=positive("head_dim", hidden // heads),
            attention_bias=bool(config.get("attention_bias", str(config.get("model_type", "")).startswith("qwen2"))),
            mlp_bias=bool(config.get("mlp_bias", False)),
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer in one decoder block."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # fmt: skip

    def layer_linear_weights(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    def layer_parameters(self) -> int:
        """One decoder block: linears, their biases, two RMSNorms."""
        shapes = self.linear_shapes()
        biases = sum(shapes[m][1] for m in ("q_proj", "k_proj", "v_proj")) if self.attention_bias else 0
        if self.mlp_bias:
            biases += sum(shapes[m][1] for m in ("gate_proj", "up_proj", "down_proj"))
        return self.layer_linear_weights() + biases + 2 * self.hidden_size

    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size

    def parameter_count(self) -> int:
        """Embeddings, blocks, final norm, and lm_head unless tied."""
        embeddings = self.embedding_parameters() * (1 if self.tie_word_embeddings else 2)
        return embeddings + self.num_hidden_layers * self.layer_parameters() + self.hidden_size

    def lora_parameters(self, rank: int, target: str = "all") -> int:
        """A (r x in) and B (out x r) for each targeted linear of each block."""
        shapes = self.linear_shapes()
        return self.num_hidden_layers * sum(rank * sum(shapes[m]) for m in lora_modules(target))


def lora_modules(target: str) -> tuple[str, ...]:
    """The module names a lora_target means; an unknown name is an error that names it."""
    if target.strip() == "all":
        return LORA_MODULES
    names = tuple(dict.fromkeys(n.strip() for n in target.split(",") if n.strip()))
    unknown = [n for n in names if n not in LORA_MODULES]
    if unknown or not names:
        raise ValueError(
            f"lora_target {target!r}: unknown module {unknown[0] if unknown else ''!r}; "
            f"use 'all' or some of {', '.join(LORA_MODULES)}"
        )
    return names
