"""Any JSON value in a spec is a 422 naming its key, never a 500: wrong types where the key sorter reads them,
values nested past the bound, numbers JSON cannot hold, scheduler arguments the chosen scheduler does not take."""

from __future__ import annotations

import inspect

import pytest
from pydantic import ValidationError

from worker.spec.job import MAX_DEPTH, JobSpec
from worker.spec.passed import SCHEDULER_ARGUMENTS


def problems(**fields) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate({"model_name_or_path": "m", "dataset": "d", **fields})
    return {".".join(str(p) for p in e["loc"]) or "spec": e["msg"] for e in info.value.errors()}


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize("value", [1, [None], "ab", [["a", 1]], True])
def test_without_effect_that_is_no_mapping_is_a_problem_naming_it(value):
    assert "must be a mapping" in problems(without_effect=value)["without_effect"]


@pytest.mark.parametrize("key", ["lr_scheduler_kwargs", "without_effect", "dataset", "seed"])
def test_a_value_nested_deeper_than_the_bound_is_refused_naming_its_key(key):
    found = problems(**{key: nested(900)})
    assert f"nests deeper than {MAX_DEPTH} levels" in found[key]
    assert key in found[key]


def test_a_value_nested_to_the_bound_is_kept():
    spec = JobSpec.model_validate({"model_name_or_path": "m", "dataset": "d", "accelerator_config": nested(MAX_DEPTH)})
    spec.model_dump_json()  # and it can be stored


@pytest.mark.parametrize("number", [float("inf"), float("-inf"), float("nan")])
def test_a_number_that_is_not_finite_is_refused_wherever_it_is(number):
    assert "not a finite number" in problems(lr_scheduler_kwargs={"x": number})["lr_scheduler_kwargs"]
    assert "(at x)" in problems(lr_scheduler_kwargs={"x": number})["lr_scheduler_kwargs"]
    assert "not a finite number" in problems(learning_rate=number)["learning_rate"]
    assert (
        "(at a.0.b)" in problems(gradient_checkpointing_kwargs={"a": [{"b": number}]})["gradient_checkpointing_kwargs"]
    )


def test_an_argument_the_scheduler_does_not_take_is_named_with_those_it_takes():
    why = problems(lr_scheduler_type="cosine", lr_scheduler_kwargs={"num_cycle": 0.5})["lr_scheduler_kwargs"]
    assert "'num_cycle'" in why and "'cosine'" in why and "num_cycles, last_epoch" in why
    why = problems(lr_scheduler_type="constant", lr_scheduler_kwargs={"num_cycles": 1})["lr_scheduler_kwargs"]
    assert "it takes none" in why


def test_the_arguments_a_scheduler_takes_are_kept():
    spec = JobSpec.model_validate(
        {
            "model_name_or_path": "m",
            "dataset": "d",
            "lr_scheduler_type": "polynomial",
            "lr_scheduler_kwargs": {"power": 2},
        }
    )
    assert spec.lr_scheduler_kwargs == {"power": 2}


def test_the_scheduler_table_is_transformers_own():
    """Each scheduler's arguments are its function's, less those get_scheduler fills; constant and
    constant_with_warmup take none because get_scheduler calls them without the kwargs (checked by calling it)."""
    import torch
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType, get_scheduler

    filled = {"optimizer", "num_warmup_steps", "num_training_steps"}
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    for name, accepted in SCHEDULER_ARGUMENTS.items():
        function = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)]
        own = [p for p in inspect.signature(function).parameters if p not in filled]
        if accepted:
            assert list(accepted) == own, name
        else:  # a made-up argument is dropped, not refused: the kwargs never reach these two
            get_scheduler(name, optimizer, 1, 10, scheduler_specific_kwargs={"made_up": 1})
        for argument in own:  # and none of them is silently dropped for the others
            assert argument in accepted or not accepted, (name, argument)
