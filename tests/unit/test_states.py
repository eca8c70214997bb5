"""The job and node state machines."""

from __future__ import annotations

import pytest

from corral.core.states import JobState, NodeState


def test_terminal_states_go_nowhere() -> None:
    for state in JobState:
        if state.is_terminal:
            assert not any(state.can_become(other) for other in JobState)


def test_every_non_terminal_state_can_end() -> None:
    """No job can get stuck: from every active state some path leads to a terminal one."""
    for start in JobState:
        seen, frontier = {start}, [start]
        while frontier:
            s = frontier.pop()
            for nxt in JobState:
                if s.can_become(nxt) and nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert any(s.is_terminal for s in seen), start


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (JobState.SUCCEEDED, JobState.RUNNING),
        (JobState.RUNNING, JobState.PENDING),
        (JobState.RUNNING, JobState.BOUND),
        (JobState.STOPPING, JobState.RUNNING),
        (JobState.PENDING, JobState.RUNNING),
    ],
)
def test_no_going_backwards(old: JobState, new: JobState) -> None:
    assert not old.can_become(new)


def test_devices_are_held_from_binding_until_the_end() -> None:
    holding = {s for s in JobState if s.holds_devices}
    assert holding == {JobState.BOUND, JobState.STARTING, JobState.RUNNING, JobState.STOPPING}


def test_only_ready_nodes_take_new_jobs() -> None:
    assert [s for s in NodeState if s.schedulable] == [NodeState.READY]
