"""GET /metrics' per-job series are bounded by what runs, not by the queue or the history (server.metrics.windows).

Every queued job used to have series of its own: 20,000 queued jobs made a scrape take more than a second.
Now the live jobs keep theirs, and windows (FTQ_METRICS_QUEUED_JOBS, FTQ_METRICS_ENDED_JOBS) bound the rest,
which the aggregates still count.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlmodel import Session

from scheduler.policy.states import JobState
from server.db.event_log import add_events
from server.db.models import Attempt, Job
from server.db.store import SqlStore
from server.metrics.windows import longest_queued, queued_since
from tests.helpers import tiny_spec, wait_for
from tests.integration.daemon import standin_daemon
from tests.integration.test_prometheus import by_job, one, scrape

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _stamp(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_the_queue_window_is_the_jobs_that_waited_longest_even_when_requeued(store: SqlStore):
    """Read a page at a time in submission order, with requeued jobs (queued again later than submitted) among
    the oldest: the window is what sorting every queued job by its time in the queue gives."""
    rng = random.Random(20)
    with Session(store.engine) as session:
        for i in range(1, 61):
            submitted = T0 + timedelta(minutes=i)
            state = JobState.QUEUED.value if i % 7 else JobState.RUNNING.value
            session.add(Job(id=i, name=f"j{i}", state=state, gpus=1, spec={}, submitted_at=submitted))
            session.flush()
            events = [(i, "state", {"job_id": i, "state": "queued", "at": _stamp(submitted)})]
            if i % 3 == 0:  # requeued (or retried) some time later: in the queue since then
                again = submitted + timedelta(minutes=rng.randint(1, 120))
                session.add(Attempt(job_id=i, number=1, state="failed", run_dir="/x", started_at=submitted,
                                    ended_at=again - timedelta(seconds=5)))  # fmt: skip
                events.append((i, "state", {"job_id": i, "state": "queued", "at": _stamp(again)}))
            if i == 5:  # a job from before the event log: its last attempt's end says when it was queued again
                events = []
                session.add(Attempt(job_id=i, number=1, state="oom", run_dir="/x", started_at=submitted,
                                    ended_at=submitted + timedelta(hours=3)))  # fmt: skip
            add_events(session, events)
        session.commit()
        queued = [j for j in range(1, 61) if j % 7]
        every = sorted((since, job_id) for job_id, since in queued_since(session, queued).items())
        assert every[0][1] == 1 and (T0 + timedelta(hours=3, minutes=5), 5) in every
        for limit in (1, 4, 10, 51, 80):
            for page in (2, 3, 500):
                assert longest_queued(session, limit, page) == every[:limit], (limit, page)


def test_per_job_series_stay_bounded_however_many_jobs_wait_or_ended(tmp_path: Path):
    """One job runs on the one GPU, 30 wait behind it, 5 ended on the CPU slot: the series are the running
    job's, the 4 queued longest, the 2 latest ended; ftq_jobs and the left-out counts say the rest."""
    with standin_daemon(
        tmp_path / "ftq", fake_gpus="1x24GiB", cpu_slots="1", metrics_queued_jobs="4", metrics_ended_jobs="2"
    ) as d:
        ended = [d.submit(tiny_spec(name=f"done-{i}", gpus=0, max_steps=3))["id"] for i in range(5)]
        running = d.submit(tiny_spec(name="holds-the-gpu", max_steps=100_000))["id"]
        queued = [d.submit(tiny_spec(name=f"waits-{i}", max_steps=5))["id"] for i in range(30)]
        wait_for(lambda: all(d.ended(j) for j in ended), timeout=60, what="the CPU jobs to end")
        wait_for(lambda: d.job(running)["state"] == "running", timeout=60, what="the GPU job to run")
        got = scrape(d)
        try:
            shown = {int(labels["id"]) for labels, _ in got["ftq_job_state"]}
            assert len(got["ftq_job_state"]) == 1 + 4 + 2, sorted(shown)
            assert running in shown and set(queued[:4]) <= shown
            assert len(shown & set(ended)) == 2
            assert set(by_job(got, "ftq_job_queued_seconds")) == set(queued[:4])  # the ones waiting longest
            assert one(got, "ftq_jobs", state="queued") == 30 and one(got, "ftq_jobs", state="succeeded") == 5
            assert one(got, "ftq_job_series_left_out", window="queued") == 26
            assert one(got, "ftq_job_series_left_out", window="ended") == 3
            longest = one(got, "ftq_queue_longest_wait_seconds")
            assert longest is not None and longest >= max(by_job(got, "ftq_job_queued_seconds").values())
        finally:
            d.http.post(f"/jobs/{running}/cancel")
