"""`pissa_convert`: a PiSSA adapter saved as a plain LoRA adapter, as LLaMA-Factory saves it.

PiSSA changes the base weights it starts from (their principal components move
into the adapter), so its adapter only works on that changed base. peft can
express what training changed as a standard LoRA adapter (of twice the rank) on
the original model, from the adapter as it was initialized: saved here before
the first step (LLaMA-Factory's PissaConvertCallback does the same), and used at
the end. The initial adapter is saved again on each attempt: PiSSA's
initialization is the same for the same base weights and seed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

INITIAL_DIR = "pissa_init"


def save_initial(model: Any, run_dir: Path) -> Path:
    """The adapter as PiSSA initialized it, with the config a conversion reads (init_lora_weights: true)."""
    where = run_dir / INITIAL_DIR
    config = model.peft_config["default"]
    init, config.init_lora_weights = config.init_lora_weights, True
    try:
        model.save_pretrained(str(where))
    finally:
        config.init_lora_weights = init
    return where


def save_converted(model: Any, initial: Path, output: Path) -> None:
    """The trained PiSSA adapter in `output` replaced by the LoRA adapter that does the same on the original base."""
    model.save_pretrained(str(output), path_initial_model_for_weight_conversion=str(initial))
    log.info("pissa_convert: saved the adapter as a LoRA adapter for the original model in %s", output)
