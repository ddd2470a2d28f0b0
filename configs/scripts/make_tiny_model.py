"""Write configs/models/tiny-chat/: a tiny random Llama chat model and its tokenizer.

Deterministic (fixed seed), offline, and small (well under a few MB), so tests
and the demo can fine-tune a real transformers model on a CPU in seconds. Run it
after make_demo_data.py, whose output it trains the tokenizer on:

    python configs/scripts/make_demo_data.py
    python configs/scripts/make_tiny_model.py

- tokenizer: byte-level BPE (the `tokenizers` library) with about 2048 tokens,
  special tokens <|endoftext|> (pad), <|im_start|>, <|im_end|> (eos), no bos, and
  a ChatML chat template like Qwen's. Rendering messages[:k] is always a string
  prefix of rendering messages[:k+1], which the worker relies on to find the
  assistant spans.
- model: a randomly initialised LlamaForCausalLM (about 0.2M parameters, weights
  drawn wider than usual so that LoRA can learn too) saved in float32
  safetensors, with a generation config that stops on <|im_end|>.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

SEED = 1234
VOCAB_SIZE = 2048
CONFIGS = Path(__file__).resolve().parent.parent
DATA_DIR = CONFIGS / "data"
OUT_DIR = CONFIGS / "models" / "tiny-chat"

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# ChatML, as Qwen writes it but without a default system message: each message is
# closed in full before the next one opens, so a rendering of a conversation's
# first k messages is a prefix of the rendering of its first k+1.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def corpus() -> list[str]:
    """Every text of the demo data, rendered the way the model will see it."""
    texts: list[str] = []
    for line in (DATA_DIR / "customer_service.jsonl").read_text(encoding="utf-8").splitlines():
        for message in json.loads(line)["messages"]:
            texts.append(f"{message['role']}\n{message['content']}\n")
    for record in json.loads((DATA_DIR / "cs_faq_alpaca.json").read_text(encoding="utf-8")):
        texts.extend(f"{prompt}\n{response}\n" for prompt, response in record.get("history", []))
        texts.append("\n".join(filter(None, (record.get("system"), record["instruction"], record["input"]))))
        texts.append(record["output"])
    return texts


def train_tokenizer(texts: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def main() -> None:
    if not (DATA_DIR / "customer_service.jsonl").exists():
        raise SystemExit(f"{DATA_DIR} has no demo data yet; run configs/scripts/make_demo_data.py first")
    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    OUT_DIR.mkdir(parents=True)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(corpus()),
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        bos_token=None,
        unk_token=None,
        model_max_length=1024,
        padding_side="right",
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.save_pretrained(OUT_DIR)
    # transformers 5 names the class TokenizersBackend and keeps the template in
    # chat_template.jinja; PreTrainedTokenizerFast (its alias) and an inline copy
    # of the template let transformers 4.x, which pyproject still allows, load it too.
    config_path = OUT_DIR / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
    tokenizer_config.update(tokenizer_class="PreTrainedTokenizerFast", chat_template=CHAT_TEMPLATE)
    config_path.write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")

    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    pad_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        # Weights drawn with std 0.1, not transformers' 0.02. The logits are
        # RMSNorm(h) @ embeddings.T, and LoRA trains neither the norm nor the (tied)
        # embeddings: at std 0.02 no adapter can push a logit past ~1.3, so LoRA's
        # loss stalls near ln(vocab). At 0.1 it falls by 2+ nats in ~100 steps, for
        # a start of ~7.9 instead of ~7.6.
        initializer_range=0.1,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=[eos_id, pad_id], pad_token_id=pad_id, bos_token_id=None, max_new_tokens=128
    )
    model.save_pretrained(OUT_DIR, safe_serialization=True)
    for path in OUT_DIR.iterdir():
        path.chmod(0o644)  # safetensors are written 0600; these files are shipped

    # Prove the folder loads offline the way the worker loads it.
    loaded_tok = AutoTokenizer.from_pretrained(OUT_DIR, local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(OUT_DIR, local_files_only=True)
    messages = json.loads((DATA_DIR / "customer_service.jsonl").read_text(encoding="utf-8").splitlines()[0])["messages"]
    renders = [loaded_tok.apply_chat_template(messages[:k], tokenize=False) for k in range(1, len(messages) + 1)]
    pairs = zip(renders, renders[1:], strict=False)
    assert all(longer.startswith(shorter) for shorter, longer in pairs), "template is not prefix-stable"
    ids = loaded_tok(renders[-1])["input_ids"]
    assert loaded_tok.decode(ids) == renders[-1], "tokenizer does not round-trip"
    with torch.no_grad():
        loss = loaded(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    params = sum(p.numel() for p in loaded.parameters())
    size = sum(f.stat().st_size for f in OUT_DIR.iterdir())
    print(
        f"wrote {OUT_DIR}: vocab {len(loaded_tok)}, {params:,} parameters, {size / 1e6:.2f} MB; "
        f"first conversation: {len(ids)} tokens, loss {loss:.3f}"
    )


if __name__ == "__main__":
    main()
