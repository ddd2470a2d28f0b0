"""Thinning a job's records for its chart (server.services.downsample): a bound, and the curve's shape kept."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from server.services.downsample import thin


def records(losses: list[float | None], kind: str = "metric", first_id: int = 1) -> list[tuple[int, str, object]]:
    return [(first_id + i, kind, loss) for i, loss in enumerate(losses)]


def kept(rows: list[tuple[int, str, object]], points: int) -> list[int]:
    return thin(rows, Counter(kind for _, kind, _ in rows), points)


def test_a_curve_within_the_bound_is_kept_whole() -> None:
    rows = records([3.0, 2.0, 1.0])
    assert kept(rows, 8) == [1, 2, 3]


def test_100000_records_become_at_most_points_keeping_the_first_and_the_last() -> None:
    losses = [2.0 + math.sin(i / 500) - i / 100_000 for i in range(100_000)]
    rows = records(losses)
    ids = kept(rows, 2000)
    assert len(ids) <= 2000
    assert ids[0] == 1 and ids[-1] == 100_000  # the last step reaches the chart
    assert ids == sorted(set(ids))
    chosen = [losses[i - 1] for i in ids]
    assert min(chosen) == min(losses) and max(chosen) == max(losses)


def test_a_spike_between_two_kept_points_survives() -> None:
    losses = [1.0] * 50_000
    losses[31_337] = 40.0  # one diverging step: the shape a chart must not smooth away
    losses[12_345] = -3.0
    ids = kept(records(losses), 100)
    assert 31_338 in ids and 12_346 in ids
    assert len(ids) <= 100


def test_each_bucket_keeps_its_lowest_and_highest_in_order() -> None:
    # 2 + 3 buckets of 4 middle records each: the points of 8 give (8 - 2) // 2 = 3 buckets.
    losses = [5.0, 1, 9, 2, 8, 3, 7, 4, 6, 5, 1, 9, 2, 0.0]
    ids = kept(records(losses), 8)
    assert ids == [1, 2, 3, 6, 7, 11, 12, 14]


def test_records_without_a_number_keep_a_place_and_do_not_break_the_order() -> None:
    losses: list[float | None] = [None] * 1000
    losses[500] = 2.5
    ids = kept(records(losses), 10)
    assert ids[0] == 1 and ids[-1] == 1000
    assert 501 in ids
    assert len(ids) <= 10


def test_other_kinds_are_kept_whole_and_kinds_are_thinned_apart() -> None:
    rows = [(1, "start", None)]
    rows += [(2 + i, "metric", float(i % 7)) for i in range(0, 2000, 2)]
    rows += [(3 + i, "eval", float(i % 5)) for i in range(0, 2000, 2)]
    rows += [(5000, "checkpoint", None), (5001, "end", None)]
    rows.sort()
    ids = kept(rows, 50)
    kinds = Counter(kind for record_id, kind, _ in rows if record_id in set(ids))
    assert kinds["start"] == 1 and kinds["checkpoint"] == 1 and kinds["end"] == 1
    assert 2 < kinds["metric"] <= 50 and 2 < kinds["eval"] <= 50
    assert 2000 in ids and 2001 in ids  # each curve's last record


def test_records_written_after_the_count_join_the_last_bucket() -> None:
    rows = records([float(i) for i in range(1000)])
    ids = thin(rows, {"metric": 900}, 20)  # 100 more came between the count and the read
    assert ids[0] == 1 and ids[-1] == 1000 and len(ids) <= 20


def test_too_few_points_is_refused() -> None:
    with pytest.raises(ValueError, match="points must be at least 8"):
        thin([], {}, 2)
