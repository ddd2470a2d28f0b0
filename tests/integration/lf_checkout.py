"""A directory laid out like a LLaMA-Factory checkout, for the corpus of job files to be submitted from.

`data/` with a dataset_info.json in LLaMA-Factory's format (named as its demo
sets are: identity, alpaca_en_demo, …, made from the shipped demo data), a
local copy of the tiny model under `models/`, `examples/deepspeed/` with its
ZeRO configs, and a LoRA adapter made here for `adapter_name_or_path`. Every
dataset feature the corpus needs has an entry: files of every type LLaMA-Factory
reads, a directory dataset, multi-turn and tool-calling chats, and the kinds ftq
refuses (preference, pre-training, multimodal, hub-only).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.helpers import REPO

DEMO = REPO / "configs/data"
OPENAI_TAGS = {
    "formatting": "sharegpt",
    "columns": {"messages": "messages"},
    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
             "system_tag": "system"},
}  # fmt: skip

TOOLS = json.dumps(
    [
        {
            "name": "order_status",
            "description": "Look up an order",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
        }
    ]
)
TOOL_CHATS = [
    {
        "conversations": [
            {"from": "human", "value": f"Where is order {n}?"},
            {"from": "function_call", "value": json.dumps({"name": "order_status", "arguments": {"order_id": str(n)}})},
            {"from": "observation", "value": json.dumps({"status": "shipped", "eta": f"{n % 5 + 1} days"})},
            {"from": "gpt", "value": f"Order {n} has shipped and arrives in {n % 5 + 1} days."},
        ],
        "tools": TOOLS,
    }
    for n in range(100, 124)
]


def build(root: Path) -> Path:
    """The checkout at `root`; returns root."""
    data = root / "data"
    data.mkdir(parents=True)
    faq = json.loads((DEMO / "cs_faq_alpaca.json").read_text())
    (data / "identity.json").write_text(json.dumps(faq[: len(faq) // 2]))
    (data / "alpaca_en_demo.json").write_text(json.dumps(faq[len(faq) // 2 :]))
    for name in ("cs_billing", "cs_shipping", "customer_service"):
        shutil.copy(DEMO / f"{name}.jsonl", data / f"{name}.jsonl")
    (data / "glaive_toolcall_demo.json").write_text(json.dumps(TOOL_CHATS))
    rows = [{"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]} for r in faq]
    _write_tables(data, rows)
    (data / "dpo_en_demo.json").write_text(
        json.dumps([{"instruction": r["instruction"], "chosen": r["output"], "rejected": "No."} for r in faq])
    )
    (data / "c4_demo.jsonl").write_text("".join(json.dumps({"text": r["output"]}) + "\n" for r in faq))
    (data / "mllm_demo.json").write_text(
        json.dumps([{"messages": [{"role": "user", "content": "<image>What is this?"},
                                  {"role": "assistant", "content": "A parcel."}], "images": ["mllm_demo_data/1.jpg"]}])
    )  # fmt: skip
    info = {
        "identity": {"file_name": "identity.json"},
        "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
        "cs_billing": {"file_name": "cs_billing.jsonl", **OPENAI_TAGS},
        "cs_shipping": {"file_name": "cs_shipping.jsonl", **OPENAI_TAGS},
        "customer_service": {"file_name": "customer_service.jsonl", **OPENAI_TAGS},
        "glaive_toolcall_demo": {
            "file_name": "glaive_toolcall_demo.json",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "tools": "tools"},
        },
        "faq_csv": {"file_name": "faq.csv"},
        "faq_parquet": {"file_name": "faq.parquet"},
        "faq_arrow": {"file_name": "faq.arrow"},
        "faq_dir": {"file_name": "faq_shards"},
        "dpo_en_demo": {
            "file_name": "dpo_en_demo.json",
            "ranking": True,
            "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"},
        },
        "c4_demo": {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}},
        "mllm_demo": {
            "file_name": "mllm_demo.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": OPENAI_TAGS["tags"],
        },
        "alpaca_zh_demo_hub": {"hf_hub_url": "llamafactory/alpaca_zh"},
    }
    (data / "dataset_info.json").write_text(json.dumps(info, indent=2))
    shutil.copytree(REPO / "configs/models/tiny-chat", root / "models/tiny-chat")
    shutil.copytree(REPO / "configs/deepspeed", root / "examples/deepspeed")
    _make_adapter(root / "models/tiny-chat", root / "adapters/tiny-lora")
    return root


def _write_tables(data: Path, rows: list[dict[str, str]]) -> None:
    """The same rows as csv, parquet, arrow and a directory of jsonl shards, through `datasets`."""
    from datasets import Dataset

    table = Dataset.from_list(rows)
    table.to_csv(str(data / "faq.csv"), index=False)
    table.to_parquet(str(data / "faq.parquet"))
    arrow = Dataset.from_list(rows)
    arrow.save_to_disk(str(data / "faq_arrow_saved"))
    shutil.copy(next((data / "faq_arrow_saved").glob("*.arrow")), data / "faq.arrow")
    shutil.rmtree(data / "faq_arrow_saved")
    shards = data / "faq_shards"
    shards.mkdir()
    half = len(rows) // 2
    for i, part in enumerate((rows[:half], rows[half:])):
        (shards / f"part-{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))


def _make_adapter(model_dir: Path, out: Path) -> None:
    """A LoRA adapter on the tiny model, saved as peft saves it, to train on from."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(out)
