"""worker.run.faults: FTQ_FAULT parses strictly, and each fault fires in the step it names, the way a real one would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerControl, TrainerState

from worker.launch.oom import exception_is_oom, is_oom, tried_to_allocate_bytes
from worker.run.faults import FAULT_ENV, Fault, FaultInjector, FaultSpecError, injected_oom, parse_faults
from worker.spec.layout import SPEC_FILE

REPO = Path(__file__).resolve().parents[2]


# ---- parsing ----


@pytest.mark.parametrize(
    ("text", "faults"),
    [
        ("", []),
        ("oom@step:3", [Fault("oom", 3)]),
        ("oom@step:5@batch>2", [Fault("oom", 5, batch_above=2)]),
        ("oom@step:3@rank:1", [Fault("oom", 3, rank=1)]),
        ("oom@rank:0@batch>1@step:2", [Fault("oom", 2, batch_above=1, rank=0)]),  # qualifiers in any order
        ("crash@step:1", [Fault("crash", 1)]),
        ("sigkill@step:7@rank:3", [Fault("sigkill", 7, rank=3)]),
        (" oom@step:2 , crash@step:9 ,", [Fault("oom", 2), Fault("crash", 9)]),
    ],
)
def test_faults_parse(text: str, faults: list[Fault]) -> None:
    assert parse_faults(text) == faults


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("oops@step:3", "unknown kind 'oops'"),
        ("oom", "no step:N"),
        ("oom@batch>2", "no step:N"),
        ("oom@step:0", "steps count from 1"),
        ("oom@step:3@step:4", "step is given twice"),
        ("oom@step=3", "cannot read 'step=3'"),
        ("oom@step:3@batch<2", "cannot read 'batch<2'"),
        ("oom@step:-1", "cannot read 'step:-1'"),
        ("OOM@step:3", "unknown kind 'OOM'"),
    ],
)
def test_a_bad_fault_says_what_is_wrong_and_the_format(text: str, says: str) -> None:
    with pytest.raises(FaultSpecError) as caught:
        parse_faults(text)
    message = str(caught.value)
    assert says in message and FAULT_ENV in message and "KIND@step:N" in message


def test_every_bad_part_is_reported_at_once() -> None:
    with pytest.raises(FaultSpecError) as caught:
        parse_faults("oom@step:0,crash@step:2,boom@step:1")
    assert "steps count from 1" in str(caught.value) and "unknown kind 'boom'" in str(caught.value)


def test_a_fault_prints_as_it_is_written() -> None:
    for text in ("oom@step:3", "oom@step:5@batch>2@rank:1", "sigkill@step:1@rank:0"):
        (fault,) = parse_faults(text)
        assert str(fault) == text


def test_which_step_batch_and_rank_a_fault_applies_to() -> None:
    fault = Fault("oom", 5, batch_above=2, rank=1)
    assert fault.applies(completed_steps=4, micro_batch=4, rank=1)
    assert not fault.applies(completed_steps=3, micro_batch=4, rank=1)  # step 4, not 5
    assert not fault.applies(completed_steps=5, micro_batch=4, rank=1)  # step 6: past it (a resume beyond it)
    assert not fault.applies(completed_steps=4, micro_batch=2, rank=1)  # the halved micro-batch of a retry
    assert not fault.applies(completed_steps=4, micro_batch=4, rank=0)
    assert Fault("oom", 1).applies(completed_steps=0, micro_batch=1, rank=7)  # every rank by default


# ---- the OOM it raises is the real one ----


def test_the_injected_oom_is_torchs_own_and_reads_like_it() -> None:
    exc = injected_oom(1)
    assert isinstance(exc, torch.OutOfMemoryError) and isinstance(exc, torch.cuda.OutOfMemoryError)
    assert str(exc).startswith("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 1 has a total capacity")
    assert "fault injected by FTQ_FAULT" in str(exc)
    assert exception_is_oom(exc) and is_oom(str(exc))
    assert tried_to_allocate_bytes(str(exc)) == 2 << 30


# ---- firing inside the step ----


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def injector(text: str, rank: int = 0) -> tuple[FaultInjector, Tiny]:
    model = Tiny()
    callback = FaultInjector(parse_faults(text), rank)
    callback.on_train_begin(SimpleNamespace(), TrainerState(), TrainerControl(), model=model)
    callback.on_train_begin(SimpleNamespace(), TrainerState(), TrainerControl(), model=model)  # hooked once only
    return callback, model


def step(callback: FaultInjector, model: Tiny, completed: int, micro_batch: int = 4) -> None:
    """One training step as the Trainer makes it: step begin, a forward, step end."""
    args, state = SimpleNamespace(per_device_train_batch_size=micro_batch), TrainerState(global_step=completed)
    callback.on_step_begin(args, state, TrainerControl())
    model(torch.zeros(1, 2))
    callback.on_step_end(args, state, TrainerControl())


def test_oom_fires_in_the_forward_of_the_nth_step_only() -> None:
    callback, model = injector("oom@step:3")
    step(callback, model, completed=0)
    step(callback, model, completed=1)
    with pytest.raises(torch.OutOfMemoryError):
        step(callback, model, completed=2)
    model(torch.zeros(1, 2))  # fired once: an evaluation after it is not hit again


def test_nothing_fires_outside_the_step_it_names() -> None:
    callback, model = injector("oom@step:2")
    step(callback, model, completed=0)
    model(torch.zeros(1, 2))  # an evaluation after step 1: not in step 2 yet
    with pytest.raises(torch.OutOfMemoryError):
        step(callback, model, completed=1)


def test_batch_and_rank_conditions() -> None:
    callback, model = injector("oom@step:1@batch>2")
    step(callback, model, completed=0, micro_batch=2)  # the retry's micro-batch gets past it
    callback, model = injector("oom@step:1@rank:1", rank=0)
    step(callback, model, completed=0)
    callback, model = injector("oom@step:1@rank:1", rank=1)
    with pytest.raises(torch.OutOfMemoryError):
        step(callback, model, completed=0)


def test_crash_is_a_runtime_error_that_is_not_oom() -> None:
    callback, model = injector("crash@step:1")
    with pytest.raises(RuntimeError) as caught:
        step(callback, model, completed=0)
    assert "injected crash in step 1" in str(caught.value) and not exception_is_oom(caught.value)


def test_sigkill_kills_the_process_itself() -> None:
    code = "from worker.run.faults import Fault, fire; fire(Fault('sigkill', 1), 0, 0); print('survived')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == -9 and "survived" not in result.stdout


# ---- a bad value is bad input ----


def test_a_bad_ftq_fault_is_reported_with_the_specs_problems(tmp_path: Path) -> None:
    from worker.run.validate import read_and_validate

    spec = {
        "model_name_or_path": str(REPO / "configs" / "models" / "tiny-chat"),
        "dataset": "cs_billing",
        "dataset_dir": str(REPO / "configs" / "data"),
        "lora_rnk": 8,
    }
    (tmp_path / SPEC_FILE).write_text(json.dumps(spec))
    _, problems = read_and_validate(tmp_path, env={FAULT_ENV: "oom@step"})
    assert any(p.startswith("lora_rnk") for p in problems)
    assert any(p.startswith("FTQ_FAULT='oom@step'") and "cannot read 'step'" in p for p in problems)
    _, problems = read_and_validate(tmp_path, env={FAULT_ENV: "oom@step:2"})
    assert not any("FTQ_FAULT" in p for p in problems)


def test_nan_makes_a_trainable_weight_nan_and_the_loss_with_it() -> None:
    model = torch.nn.Linear(2, 1)
    Fault("nan", 1)  # parses as a kind of its own
    assert parse_faults("nan@step:2") == [Fault("nan", 2)]
    from worker.run.faults import fire

    fire(Fault("nan", 1), 0, 0, model)
    assert not torch.isfinite(model(torch.ones(1, 2))).any()
