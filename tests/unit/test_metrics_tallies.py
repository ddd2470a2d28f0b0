"""GET /metrics' wait histograms kept as bucket counts (server.metrics.waits): they say what counting every wait
again says (families.observe), after waits are added and changed."""

from __future__ import annotations

import random

import pytest

from server.metrics import families
from server.metrics.waits import _Counts


def test_kept_counts_agree_with_counting_every_wait_again():
    rng = random.Random(4)
    waits: dict[int, float] = {}
    counts = _Counts()
    for job_id in range(3000):
        key = rng.randrange(2000)  # some jobs' waits are read again, and changed
        value = rng.choice([-1.0, 0.0, 1.0, 5.0, 86400.0, 1e6, round(rng.expovariate(1 / 600), 3)])
        if key in waits:
            counts.remove(waits[key])
        waits[key] = value
        counts.add(value)
        if job_id % 500 == 0 or job_id == 2999:
            want = families.observe(waits.values(), families.WAIT_BUCKETS)
            got = counts.observed()
            assert got.cumulative == want.cumulative and got.count == want.count
            assert got.total == pytest.approx(want.total, abs=0.01)
