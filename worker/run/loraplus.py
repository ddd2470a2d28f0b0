"""LoRA+ (loraplus_lr_ratio): the B matrices learn faster than the A matrices, with peft's optimizer builder.

peft's create_loraplus_optimizer groups the parameters as LLaMA-Factory's
_create_loraplus_optimizer does: A matrices (and the other matrices that train,
such as additional_target's) at learning_rate, B matrices and 1-D parameters at
learning_rate x loraplus_lr_ratio, with weight decay as TrainingArguments sets it.
One difference: LLaMA-Factory puts only an embedding's lora_embedding_B at
loraplus_lr_embedding, peft both of its matrices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.spec.job import JobSpec


@dataclass(frozen=True)
class LoraPlus:
    lr_ratio: float
    lr_embedding: float

    @classmethod
    def of(cls, spec: JobSpec) -> LoraPlus | None:
        if spec.loraplus_lr_ratio is None:
            return None
        return cls(spec.loraplus_lr_ratio, spec.loraplus_lr_embedding)

    def create_optimizer(self, model: Any, args: Any) -> Any:
        """The optimizer TrainingArguments names (optim, betas, eps), over LoRA+'s parameter groups."""
        from peft.optimizers import create_loraplus_optimizer
        from transformers import Trainer

        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        taken = {"params", "model", "optimizer_dict"} & set(kwargs)
        if taken:  # worker.spec.methods refuses these optims at submit; a new transformers may add more
            raise ValueError(f"loraplus_lr_ratio cannot give its parameter groups to optim {args.optim}")
        lr = kwargs.pop("lr")
        return create_loraplus_optimizer(
            model,
            optimizer_cls,
            lr=lr,
            loraplus_lr_ratio=self.lr_ratio,
            loraplus_lr_embedding=self.lr_embedding,
            loraplus_weight_decay=args.weight_decay,
            **kwargs,
        )
