"""The scheduler reads the queue only when some job could start: with every GPU held and no CPU job waiting for a
free slot, `plan` places nothing however long the queue, and 20,000 queued jobs cost about half a second of the
daemon's interpreter a tick to read (every request waits on it meanwhile)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlmodel import Session

from scheduler.attempts import begin_attempt
from scheduler.gpus.fake import FakeProbe
from scheduler.gpus.types import GpuInfo
from scheduler.loop import Scheduler
from scheduler.policy.placement import Placement, QueuedJob, QueueShape, can_place_any, cpu_slot_names, plan
from server.db.engine import make_engine, upgrade_database
from server.db.models import Job
from server.db.store import SqlStore
from server.settings import Settings
from worker.spec.units import GIB


def gpu(index: int, healthy: bool = True) -> GpuInfo:
    return GpuInfo(f"GPU-{index}", index, "fake", 24 * GIB, 24 * GIB, 0, 0, (), None, healthy=healthy)


def test_a_gpu_job_could_start_only_on_a_healthy_gpu_nobody_holds() -> None:
    gpus = [gpu(0), gpu(1, healthy=False)]
    assert can_place_any(gpus, set(), 0, QueueShape(gpu_jobs=1, cpu_jobs=0))
    assert not can_place_any(gpus, {"GPU-0"}, 0, QueueShape(gpu_jobs=1, cpu_jobs=0))  # GPU-1 is unhealthy
    assert not can_place_any(gpus, {"GPU-0"}, 1, QueueShape(gpu_jobs=5, cpu_jobs=0))  # a free slot is no GPU
    assert can_place_any(gpus, {"GPU-0"}, 1, QueueShape(gpu_jobs=5, cpu_jobs=1))
    assert not can_place_any(gpus, {"GPU-0", "cpu-0"}, 1, QueueShape(gpu_jobs=5, cpu_jobs=1))
    assert not can_place_any(gpus, set(), 1, QueueShape(gpu_jobs=0, cpu_jobs=0))


queued = st.builds(
    QueuedJob,
    job_id=st.integers(1, 10_000),
    priority=st.integers(-2, 2),
    seq=st.integers(1, 10_000),
    gpus=st.integers(0, 3),
    need_bytes=st.integers(0, 30 * GIB),
)


@settings(max_examples=300, deadline=None)
@given(
    queue=st.lists(queued, max_size=12),
    machine=st.lists(st.tuples(st.booleans(), st.booleans()), max_size=4),  # (healthy, held) per GPU
    cpu_slots=st.integers(0, 2),
    held_slots=st.integers(0, 2),
)
def test_when_no_job_could_start_plan_places_none(
    queue: list[QueuedJob], machine: list[tuple[bool, bool]], cpu_slots: int, held_slots: int
) -> None:
    gpus = [gpu(i, healthy) for i, (healthy, _) in enumerate(machine)]
    leased = {f"GPU-{i}" for i, (_, held) in enumerate(machine) if held} | set(cpu_slot_names(held_slots))
    shape = QueueShape(gpu_jobs=sum(1 for j in queue if j.gpus), cpu_jobs=sum(1 for j in queue if not j.gpus))
    if not can_place_any(gpus, leased, cpu_slots, shape):
        assert plan(queue, gpus, leased, cpu_slots).placements == []


class CountingStore(SqlStore):
    """The real store, counting how often the loop reads the whole queue."""

    reads = 0

    def queued_jobs(self):  # type: ignore[no-untyped-def]
        self.reads += 1
        return super().queued_jobs()


def test_with_every_gpu_held_the_loop_does_not_read_a_queue_of_gpu_jobs(tmp_path: Path) -> None:
    engine = make_engine(Settings(data_dir=tmp_path))
    upgrade_database(engine)
    store = CountingStore(engine)
    probe = FakeProbe("1x24GiB")
    with Session(engine) as session:
        jobs = [Job(name=f"j{i}", state="queued", gpus=1, spec={"name": f"j{i}"}) for i in range(200)]
        session.add_all(jobs)
        session.commit()
        first = jobs[0].id
    assert first is not None
    only_gpu = probe.snapshot()[0].uuid
    assert begin_attempt(store, Placement(first, (only_gpu,), "0"), tmp_path / "runs") is not None
    assert store.queue_shape() == QueueShape(gpu_jobs=199, cpu_jobs=0)

    loop = Scheduler(store, probe, tmp_path / "runs", cpu_slots=1, cancel_grace_s=1)
    for _ in range(3):
        loop.step()
    assert store.reads == 0  # before: one read of all 199 a step
    assert store.queue_shape() == QueueShape(gpu_jobs=199, cpu_jobs=0)  # and nothing started

    with Session(engine) as session:  # a CPU job and a free slot: the queue is read
        session.add(Job(name="cpu", state="queued", gpus=0, spec={"name": "cpu"}))
        session.commit()
    assert store.queue_shape() == QueueShape(gpu_jobs=199, cpu_jobs=1)
    assert can_place_any(probe.snapshot(), store.leased_resources(), 1, store.queue_shape())
