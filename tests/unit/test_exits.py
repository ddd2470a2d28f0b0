from scheduler.policy.exits import classify
from scheduler.policy.states import JobState
from worker.spec.exits import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OOM, describe_exit


def test_sigkill_is_explained_not_reported_as_minus_nine():
    text = describe_exit(-9)
    assert text.startswith("killed by signal 9 (SIGKILL) — likely the host ran out of memory")


def test_shell_style_signal_codes_are_decoded():
    assert "128 + signal 15 (SIGTERM)" in describe_exit(143)
    assert describe_exit(1) == "exited with code 1"


def test_success_needs_exit_zero_and_an_end_record_that_says_so():
    assert classify(0, {"status": "succeeded"}, False).state == JobState.SUCCEEDED
    assert classify(0, None, False).state == JobState.FAILED


def test_oom_from_exit_code_or_record():
    assert classify(EXIT_OOM, None, False).state == JobState.OOM
    assert classify(1, {"status": "oom", "error": "CUDA out of memory"}, False).state == JobState.OOM


def test_failure_reasons_carry_the_workers_error():
    outcome = classify(EXIT_FAILED, {"status": "failed", "error": "ValueError: boom"}, False)
    assert outcome.state == JobState.FAILED and "ValueError: boom" in outcome.reason
    bad = classify(EXIT_BAD_INPUT, {"status": "failed", "error": "dataset 'x' unknown"}, False)
    assert bad.reason.startswith("bad input") and "'x'" in bad.reason
    killed = classify(-9, {"kind": "metric"}, False)
    assert killed.reason.startswith("the worker was killed by signal 9 (SIGKILL)")


def test_a_requested_cancel_wins():
    assert classify(-15, None, True).state == JobState.CANCELLED
    assert classify(0, {"status": "succeeded"}, True).state == JobState.CANCELLED


def test_a_worker_that_never_got_its_go_is_queued_again():
    from worker.spec.exits import EXIT_NOT_STARTED

    for outcome in (classify(EXIT_NOT_STARTED, None, False), classify(None, {"status": "not_started"}, False)):
        assert outcome.state == JobState.FAILED and outcome.requeue and "never started" in outcome.reason
    assert classify(None, {"status": "not_started"}, True).state == JobState.CANCELLED
