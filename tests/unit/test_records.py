"""What the worker reports is made safe to store: huge steps, NaN, unknown kinds, giant lines."""

from __future__ import annotations

import json
import math

from scheduler.local.tail import read_records
from scheduler.policy.records import INT64_MAX, MAX_RECORD_BYTES, as_step, record_time, storable


def test_a_step_beyond_int64_is_kept_raw_with_the_reason():
    kept = storable({"kind": "start", "current_steps": 0, "total_steps": 2**63})
    assert not kept.valid and kept.step == 0
    assert "total_steps" in kept.data["reason"] and str(INT64_MAX) in kept.data["reason"]
    assert "9223372036854775808" in kept.data["raw"]


def test_nan_loss_is_stored_as_null_and_named():
    kept = storable({"kind": "metric", "current_steps": 5, "loss": math.nan, "extra": {"x": [1.0, math.inf]}})
    assert kept.valid and kept.step == 5
    assert kept.data["loss"] is None and kept.data["extra"]["x"] == [1.0, None]
    assert kept.data["nonfinite"] == ["loss", "extra.x[1]"]
    json.dumps(kept.data, allow_nan=False)  # a JSON response can carry it


def test_unknown_kinds_fractional_steps_and_giant_records_are_kept_raw():
    assert storable({"kind": "telemetry"}).kind == "invalid"
    assert storable({"kind": "metric", "current_steps": 2.5}).kind == "invalid"
    assert storable({"kind": "metric", "current_steps": True}).kind == "invalid"
    assert storable({"kind": "metric", "current_steps": "7"}).kind == "invalid"
    giant = storable({"kind": "metric", "current_steps": 1, "blob": "x" * (MAX_RECORD_BYTES + 1)})
    assert giant.kind == "invalid" and len(giant.data["raw"]) <= 2000


def test_steps_are_whole_numbers_in_range():
    assert as_step(3) == 3 and as_step(3.0) == 3 and as_step(INT64_MAX) == INT64_MAX
    assert as_step(-1) is None and as_step(2**63) is None and as_step(math.nan) is None and as_step(None) is None


def test_the_record_time_is_read_from_its_timestamp():
    assert record_time({"timestamp": "2026-12-02T01:02:03.456Z"}).isoformat() == "2026-12-02T01:02:03.456000+00:00"
    assert record_time({"timestamp": "yesterday"}) is None and record_time({}) is None


def test_lines_that_are_not_objects_are_kept_visible(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'[1, 2]\n\xff\xfe\n{"kind": "metric"}\n' + b"[" * 100_000 + b"\n")
    records = read_records(path, 0).records
    assert [r["kind"] for r in records] == ["invalid", "invalid", "metric", "invalid"]
    assert all("reason" in r for r in records if r["kind"] == "invalid")
