"""The CLI's pure parts: SSE parsing, backoff, error wording, ETAs and bars, tables, sentences."""

from __future__ import annotations

import io

from rich.console import Console

from server.cli.client import error_message, unreachable_message
from server.cli.sse import SseEvent, SseParser, backoff_s, ends_job_stream
from server.cli.tables import compare_table, fmt_duration, jobs_table
from server.cli.watch_view import WatchRow, change_line, eta_s, watch_row, watch_table
from server.cli.words import estimate_text, event_line, status_text


def parse(lines: list[str]) -> list[SseEvent]:
    parser = SseParser()
    return [event for event in map(parser.feed, lines) if event is not None]


def test_sse_lines_make_events_with_their_ids_and_json():
    events = parse(
        [
            ": ping",
            "id: 7",
            "event: state",
            'data: {"job_id": 3, "state": "running"}',
            "",
            "",  # a second blank line dispatches nothing
            "id:8",
            "event:metric",
            'data:{"job_id": 3,',
            'data: "attempt": 1}',
            "retry: 3000",
            "",
            "data: not json",
            "",
        ]
    )
    assert events == [
        SseEvent(7, "state", {"job_id": 3, "state": "running"}),
        SseEvent(8, "metric", {"job_id": 3, "attempt": 1}),  # data lines joined with a newline
        SseEvent(8, "message", "not json"),  # no id: the last one stands; no event: "message"
    ]


def test_a_comment_alone_is_no_event_and_the_last_id_survives_it():
    parser = SseParser(last_id=41)
    assert [parser.feed(line) for line in (": ping", "")] == [None, None]
    assert parser.last_id == 41


def test_a_job_stream_ends_at_a_terminal_state_only():
    assert ends_job_stream(SseEvent(1, "state", {"state": "oom"}))
    assert not ends_job_stream(SseEvent(1, "state", {"state": "running"}))
    assert not ends_job_stream(SseEvent(1, "end", {"record": {"status": "succeeded"}}))


def test_reconnects_back_off_to_a_ceiling():
    assert [backoff_s(n) for n in range(1, 8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_errors_in_the_clis_words():
    assert error_message(401, {"detail": "no token"}, "/jobs", token_set=False) == (
        "ftq: the daemon wants a token: set FTQ_API_TOKEN"
    )
    assert "refused the token in FTQ_API_TOKEN" in error_message(401, {"detail": "x"}, "/jobs", token_set=True)
    assert error_message(404, {"detail": "..."}, "/jobs/12/logs", False) == "ftq: no job 12: run `ftq list`"
    no_job = {"detail": "job 5 does not exist; GET /jobs lists the jobs"}
    assert error_message(404, no_job, "/compare", False) == "ftq: no job 5: run `ftq list`"
    body = {"detail": "invalid job spec", "errors": [{"field": "cutoff_len", "message": "must be positive"}]}
    assert error_message(422, body, "/jobs", False) == "ftq: 422: invalid job spec\n  - cutoff_len: must be positive"
    assert unreachable_message("http://h:1").endswith("start it with `ftq serve` or set FTQ_URL")


def test_durations_as_people_read_them():
    assert [fmt_duration(s) for s in (None, 0, 42.4, 65, 3599, 3600 * 3 + 12 * 60)] == [
        "-",
        "0s",
        "42s",
        "1m05s",
        "59m59s",
        "3h12m",
    ]


def test_the_eta_comes_from_the_record_less_its_age_else_from_the_pace():
    assert eta_s({"remaining_time": "0:01:40"}, 10.0, 5, 20, 999.0) == 90.0
    assert eta_s({"remaining_time": "0:00:05"}, 10.0, 5, 20, None) == 0.0
    assert eta_s(None, 0.0, 5, 20, 50.0) == 150.0  # 10 s a step, 15 steps left
    assert eta_s({}, 0.0, None, 20, 50.0) is None and eta_s(None, 0.0, 5, None, 50.0) is None


def job(**fields):
    return {"id": 3, "name": "cs-billing", "state": "running", "cuda_visible_devices": "0,1", **fields}


def test_a_watch_row_takes_the_newer_of_the_summary_and_the_record():
    record = {"current_steps": 12, "total_steps": 40, "loss": 0.5, "throughput": 900.0, "remaining_time": "0:02:00"}
    row = watch_row(job(progress={"current_steps": 10, "total_steps": 40}, loss=0.6), record, 0.0, 60.0)
    assert (row.step, row.total, row.percent, row.eta_s, row.loss, row.tokens_per_s) == (12, 40, 30.0, 120.0, 0.6, 900)
    assert row.gpus == "0,1"
    queued = watch_row(job(state="queued", waiting="waiting for 2 GPUs with 20.0 GiB free"), None, 0.0, None)
    assert (queued.gpus, queued.percent, queued.eta_s, queued.why) == ("-", None, None, queued.why)
    assert queued.why.startswith("waiting for 2 GPUs")
    done = watch_row(job(state="succeeded", progress={"current_steps": 40, "total_steps": 40}), record, 0.0, 9.0)
    assert (done.percent, done.eta_s, done.tokens_per_s) == (100.0, None, None)


def test_a_change_line_says_when_who_what_and_how_far():
    row = WatchRow(3, "cs-billing", "running", "0", 12, 40, 30.0, 65.0, 0.51234, None, "")
    assert change_line(row, "12:00:01") == "12:00:01  job 3  cs-billing  running  12/40  loss 0.5123  30%  ETA 1m05s"
    waiting = WatchRow(4, "b", "queued", "-", None, None, None, None, None, None, "waiting for a CPU slot")
    assert change_line(waiting, "12:00:02") == "12:00:02  job 4  b  queued  -  loss -  waiting for a CPU slot"
    assert row.key() != WatchRow(3, "cs-billing", "running", "0", 13, 40, 32.5, 60.0, 0.5, None, "").key()


def test_the_terminal_view_has_bars_percentages_etas_and_the_daemons_status():
    rows = [WatchRow(3, "cs-billing", "running", "0", 12, 40, 30.0, 65.0, 0.5, 1234.0, "")]
    out = io.StringIO()
    Console(file=out, width=160, force_terminal=True, color_system=None).print(
        watch_table(rows, "ftq watch", "daemon unreachable, reconnecting…")
    )
    text = out.getvalue()
    assert "daemon unreachable, reconnecting…" in text and "━" in text
    (line,) = [line for line in text.splitlines() if "cs-billing" in line]
    assert line.split() == ["3", "cs-billing", "running", "0", "━" * 7, "30%", "12/40", "1m05s", "0.5000", "1,234"]


def test_the_compare_table_and_where_results_are():
    rows = [
        {
            "id": 1,
            "name": "a",
            "state": "succeeded",
            "final_loss": 0.5,
            "final_eval_loss": 0.61,
            "steps": 40,
            "total_steps": 40,
            "tokens_per_s": 1234.5,
            "peak_vram_gib": 18.25,
            "wall_time_s": 3700,
            "gpu_hours": 2.06,
            "result": "/runs/job-1/output",
            "attempts": 2,
        },
        {"id": 2, "name": "b", "state": "queued", "attempts": 0},
    ]
    lines = compare_table(rows).splitlines()
    assert lines[1].split() == ["1", "a", "succeeded", "0.5000", "0.6100", "40/40", "1,234", "18.2", "GiB", "1h01m"] + [
        "2.06",
        "2",
    ]
    assert lines[2].split() == ["2", "b", "queued", "-", "-", "-", "-", "-", "-", "-", "0"]
    assert lines[3] == "job 1 (a): result in /runs/job-1/output"


def test_the_jobs_table_says_why_a_job_waits():
    (_, line) = jobs_table([job(state="queued", cuda_visible_devices=None, waiting="waiting for a CPU slot")]).split(
        "\n"
    )
    assert line.endswith("waiting for a CPU slot")


def test_status_in_a_few_lines():
    text = status_text(
        job(
            progress={"current_steps": 12, "total_steps": 40, "percentage": 30.0},
            loss=0.5,
            reason="retrying after CUDA out of memory with a micro-batch of 2",
            attempts=[
                {"number": 1, "state": "oom", "last_step": 10, "reason": "CUDA out of memory at step 10"},
                {"number": 2, "state": "running", "last_step": 12, "reason": None},
            ],
        )
    )
    assert text.splitlines()[:3] == [
        "job 3 (cs-billing): running on GPUs 0,1",
        "  progress: step 12/40 (30%), loss 0.5000",
        "  reason: retrying after CUDA out of memory with a micro-batch of 2",
    ]
    assert "  attempts: 2 (1: oom at step 10 (CUDA out of memory at step 10); 2: running at step 12)" in text
    queued = status_text(job(state="queued", cuda_visible_devices=None, gpus=2, waiting="waiting for 2 GPUs"))
    assert queued.splitlines()[0] == "job 3 (cs-billing): queued" and "  waiting: waiting for 2 GPUs" in queued


def test_an_estimate_in_words():
    fits = {
        "gpus": 1,
        "per_gpu_gib": 7.25,
        "margin_gib": 1.0,
        "fits_ever": True,
        "fits_now": {"cuda_visible_devices": "1"},
    }
    assert estimate_text(fits).splitlines() == [
        "The job needs about 7.2 GiB on each of 1 GPU(s) (estimate, plus a margin of 1.0 GiB).",
        "It fits now on CUDA_VISIBLE_DEVICES=1.",
    ]
    later = {"gpus": 2, "per_gpu_gib": 30.0, "fits_ever": True, "fits_now": None, "largest_offer_gib": 12.0}
    assert "It does not fit now, but it will once other jobs free their GPUs" in estimate_text(later)
    never = {
        "gpus": 1,
        "per_gpu_gib": 90.0,
        "fits_ever": False,
        "fits_now": None,
        "largest_offer_gib": 24.0,
        "problems": [{"field": "gpus", "message": "it can never fit"}],
        "suggestions": ["gradient_checkpointing: true (about 20.1 GiB)"],
    }
    assert estimate_text(never).splitlines()[1:] == [
        "It can never fit on this machine: its best 1 GPU(s) have 24.0 GiB each.",
        "Problem: gpus: it can never fit",
        "It would fit with:",
        "  - gradient_checkpointing: true (about 20.1 GiB)",
    ]
    assert estimate_text({"gpus": 0}).startswith("The job runs on a CPU slot")


def test_events_as_lines():
    state = SseEvent(9, "state", {"job_id": 3, "name": "a", "state": "failed", "reason": "bad input", "at": "T"})
    assert event_line(state) == "#9 T job 3 a: failed (bad input)"
    record = {"kind": "metric", "timestamp": "T", "current_steps": 5, "total_steps": 20, "loss": 0.5, "throughput": 99}
    assert event_line(SseEvent(10, "metric", {"job_id": 3, "attempt": 1, "record": record})) == (
        "#10 T job 3 attempt 1 metric: step 5/20, loss 0.5000, 99 tok/s"
    )
    gpus = {"gpus": [{"index": 0, "memory_used": 2**31, "memory_total": 2**34, "bound_job": 3}], "at": "T"}
    assert event_line(SseEvent(11, "gpus", gpus)) == "#11 T gpus: 0: 2.0/16.0 GiB job 3"
    alert = {"alert": "vram", "job_id": 3, "gpu": 0, "message": "GPU 0 is 96% full", "at": "T"}
    assert event_line(SseEvent(12, "alert", alert)) == "#12 T ALERT vram: GPU 0 is 96% full"


def test_where_ran_names_each_node_of_a_job_across_nodes_by_its_short_id():
    from server.cli.tables import where_ran

    assert where_ran("0,1") == "0,1" and where_ran("") == "cpu" and where_ran(None) == "-"
    assert where_ran("a" * 56 + ":0,1;" + "b" * 56 + ":0,1") == "aaaaaaaa:0,1;bbbbbbbb:0,1"
