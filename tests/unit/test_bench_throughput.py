"""The throughput bench's pure parts: the chat-length distribution and the numbers read from a job's records."""

from __future__ import annotations

import math
import statistics

import pytest

from bench.chat_lengths import draw_lengths, lognormal_sigma
from bench.throughput import default_vs_padded, steady_tokens_per_s, summarize, verdict_line


def test_sigma_gives_the_asked_mean() -> None:
    sigma = lognormal_sigma(178, 216)
    assert 178 * math.exp(sigma**2 / 2) == pytest.approx(216)


def test_a_mean_below_the_median_is_refused() -> None:
    with pytest.raises(ValueError):
        lognormal_sigma(200, 150)


def test_lengths_have_the_median_and_nearly_the_mean_under_the_cap() -> None:
    lengths = draw_lengths(1280, 178, 216, cap=1024)
    assert statistics.median(lengths) == pytest.approx(178, abs=1)
    assert statistics.fmean(lengths) == pytest.approx(216, rel=0.02)  # the cap trims a little of the tail
    assert 40 <= min(lengths) and max(lengths) <= 1024


def test_lengths_are_the_same_for_the_same_seed() -> None:
    assert draw_lengths(64, 178, 216, 1024, seed=3) == draw_lengths(64, 178, 216, 1024, seed=3)


def metric(step: int, second: float, tokens: int | None, throughput: float = 1.0) -> dict:
    record = {"kind": "metric", "timestamp": f"2026-01-01T00:00:{second:06.3f}Z", "current_steps": step}
    record |= {"loss": 10.0 - step, "throughput": throughput}
    return record | ({"total_tokens": tokens} if tokens is not None else {})


def test_steady_rate_runs_from_step_2_to_the_last() -> None:
    records = [metric(1, 10, 900), metric(2, 12, 1000), metric(3, 13, 1500), metric(4, 14, 2000)]
    assert steady_tokens_per_s(records) == pytest.approx(500)  # (2000 - 1000) tokens in 2 s


def test_without_token_counts_the_last_throughput_stands() -> None:
    records = [metric(1, 10, None, 5.0), metric(2, 12, None, 6.0), metric(3, 13, None, 7.0)]
    assert steady_tokens_per_s(records) == 7.0


def test_absent_fields_are_none_and_losses_cover_steps_1_to_5() -> None:
    row = summarize([{"kind": "start"}, metric(1, 1, 10), metric(2, 2, 20), {"kind": "end", "status": "succeeded"}])
    assert row["losses"] == [9.0, 8.0, None, None, None]
    assert row["pad_share"] is None and row["peak_gib"] is None and row["micro_batch"] is None


def test_default_against_padded() -> None:
    rows = [
        {"mode": "padded", "tokens_per_s": 100.0, "peak_gib": 10.0},
        {"mode": "ftq-default", "tokens_per_s": 550.0, "peak_gib": 4.0},
    ]
    assert default_vs_padded(rows) == (pytest.approx(5.5), pytest.approx(0.4))
    assert verdict_line(rows) == "ftq default vs padded: 5.50× real tokens/s, peak memory -60%"
