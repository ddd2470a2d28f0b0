from scheduler.policy.states import TERMINAL, JobState, allowed_from, can_transition, is_terminal


def test_the_design_cards_transitions():
    assert can_transition(JobState.QUEUED, JobState.STARTING)
    assert can_transition(JobState.QUEUED, JobState.CANCELLED)
    assert can_transition(JobState.RUNNING, JobState.OOM)
    assert can_transition(JobState.STARTING, JobState.CANCELLING)
    assert not can_transition(JobState.QUEUED, JobState.RUNNING)
    assert not can_transition(JobState.CANCELLING, JobState.SUCCEEDED)


def test_terminal_states_are_final_except_for_requeue():
    assert {s for s in JobState if is_terminal(s)} == set(TERMINAL)
    assert not any(can_transition(JobState.SUCCEEDED, s) for s in JobState)
    for state in (JobState.FAILED, JobState.OOM, JobState.CANCELLED):
        assert [s for s in JobState if can_transition(state, s)] == [JobState.QUEUED]


def test_allowed_from_is_the_inverse_of_the_table():
    assert allowed_from(JobState.CANCELLED) == {JobState.QUEUED, JobState.CANCELLING}
    assert allowed_from(JobState.RUNNING) == {JobState.STARTING}


def test_route_goes_through_the_steps_an_end_learnt_early_skipped():
    from scheduler.policy.states import route

    S = JobState
    assert route(S.STARTING, S.SUCCEEDED) == [S.RUNNING, S.SUCCEEDED]
    assert route(S.RUNNING, S.CANCELLED) == [S.CANCELLING, S.CANCELLED]
    assert route(S.RUNNING, S.OOM) == [S.OOM]
    assert route(S.RUNNING, S.RUNNING) == []
    # Terminal states are final, and nothing routes into the queue (that is a requeue: a new attempt).
    assert route(S.SUCCEEDED, S.FAILED) is None and route(S.CANCELLED, S.QUEUED) is None
    assert route(S.CANCELLING, S.SUCCEEDED) is None
