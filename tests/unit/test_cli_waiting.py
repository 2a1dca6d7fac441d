"""`--wait` as a pure function: sequences of looks at an instance in, lines and an outcome out."""

from __future__ import annotations

from nebula_core.cli.waiting import FASTEST_S, SLOWEST_S, TARGET, Seen, judge, next_delay, step

WHAT = "instance web-1 (i-1)"


def looks(*states: str, every: float = 1.0, error: str = "") -> list[Seen]:
    return [Seen(state, error if state in ("error", "unknown") else "", i * every) for i, state in enumerate(states)]


def test_reaching_the_target_ends_well_showing_each_change_once() -> None:
    lines, outcome = judge(looks("pending", "pending", "scheduled", "running"), "running", 60, WHAT)
    assert outcome is not None and outcome.exit_code == 0
    assert lines == [
        f"{WHAT}: pending (0.0s)",
        f"{WHAT}: pending -> scheduled (2.0s)",
        f"{WHAT}: scheduled -> running (3.0s)",
    ]


def test_an_error_ends_the_wait_with_exit_1_and_the_reason() -> None:
    lines, outcome = judge(
        looks("pending", "scheduled", "error", "running", error="no node has 4 free vCPUs"), "running", 60, WHAT
    )
    assert outcome is not None and outcome.exit_code == 1
    assert outcome.message == f"{WHAT} ended in error: no node has 4 free vCPUs"
    assert lines[-1] == f"{WHAT}: scheduled -> error (2.0s)"  # nothing is looked at after the end


def test_an_error_without_a_reason_says_so() -> None:
    _, outcome = judge(looks("error"), "running", 60, WHAT)
    assert outcome is not None and outcome.message.endswith("ended in error: no reason given")


def test_the_deadline_ends_the_wait_naming_the_state_it_is_stuck_in() -> None:
    _, outcome = judge(looks("pending", "pending", "pending"), "running", 1.5, WHAT)
    assert outcome is not None and outcome.exit_code == 1
    assert outcome.message == f"timed out after 1.5s waiting for {WHAT} to be running; it is pending"


def test_reaching_the_target_at_the_deadline_still_counts() -> None:
    _, outcome = judge(looks("stopping", "stopped"), "stopped", 1.0, WHAT)
    assert outcome is not None and outcome.exit_code == 0


def test_a_zero_timeout_takes_one_look() -> None:
    assert judge(looks("running"), "running", 0, WHAT)[1].exit_code == 0  # type: ignore[union-attr]
    assert judge(looks("pending"), "running", 0, WHAT)[1].exit_code == 1  # type: ignore[union-attr]


def test_being_deleted_while_waiting_for_something_else_fails() -> None:
    _, outcome = judge(looks("rebooting", "deleting", "deleted"), "running", 60, WHAT)
    assert outcome is not None and outcome.exit_code == 1 and "was deleted" in outcome.message
    _, deleted = judge(looks("deleting", "deleted"), TARGET["delete"], 60, WHAT)
    assert deleted is not None and deleted.exit_code == 0


def test_an_unknown_state_shows_why_and_keeps_waiting() -> None:
    lines, outcome = judge(looks("running", "unknown", error="node-a went silent"), "stopped", 60, WHAT)
    assert outcome is None
    assert lines[-1] == f"{WHAT}: running -> unknown: node-a went silent (1.0s)"


def test_no_outcome_while_the_sequence_has_not_decided() -> None:
    assert judge(looks("pending", "scheduled"), "running", 60, WHAT) == (
        [f"{WHAT}: pending (0.0s)", f"{WHAT}: pending -> scheduled (1.0s)"],
        None,
    )
    assert step(Seen("pending"), Seen("pending", elapsed=3), "running", 60, WHAT).line is None


def test_each_operation_waits_for_the_state_it_leads_to() -> None:
    assert TARGET == {
        "create": "running",
        "start": "running",
        "reboot": "running",
        "stop": "stopped",
        "delete": "deleted",
    }


def test_polling_backs_off_while_nothing_changes_and_resets_on_a_change() -> None:
    delay = FASTEST_S
    for _ in range(20):
        delay = next_delay(delay, changed=False)
    assert delay == SLOWEST_S
    assert next_delay(delay, changed=True) == FASTEST_S
