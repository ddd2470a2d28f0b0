"""The keys for what a run leaves beside its metrics, as LLaMA-Factory names them: loss plots and TensorBoard.

A mixin of worker.spec.job_fields.JobFields, kept apart so that each file holds one group of keys.
`report_to` is honoured for `tensorboard` only: worker.spec.job sorts any other
integration a file names into `without_effect` (see `split_report_to`), where the
job's notes say why, as they did before ftq ran any.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, Field

TENSORBOARD = "tensorboard"
NOTHING: Final = "none"  # transformers' and LLaMA-Factory's word for no integration


class OutputFields(BaseModel):
    """LLaMA-Factory's plot_loss and transformers' report_to, as far as ftq runs them."""

    plot_loss: bool = Field(
        default=False,
        description="Draw training_loss.png (and training_eval_loss.png when the run evaluated) beside the result.",
    )
    report_to: Literal["none", "tensorboard"] = Field(
        default=NOTHING,
        description="tensorboard: write TensorBoard event files into the run dir (other integrations: no effect).",
    )


def split_report_to(value: Any) -> tuple[str | None, Any]:
    """(what ftq runs of a report_to value, the rest, which asks for nothing ftq does; None where there is none).

    transformers takes a name or a list of names; "none" (however spelt) asks for
    nothing, and so does "all" as far as ftq goes: it is kept whole with the rest,
    as is a value of any other type.
    """
    if value in (None, [], NOTHING, [NOTHING]):
        return None, None
    if not isinstance(value, (str, list)):
        return None, value
    names = [value] if isinstance(value, str) else value
    ours = TENSORBOARD if TENSORBOARD in names else None
    rest = [name for name in names if name not in (TENSORBOARD, NOTHING)]
    if not rest:
        return ours, None
    return ours, rest[0] if isinstance(value, str) else rest
