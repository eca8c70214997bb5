"""Job and node state machines.

The enums below are the single source of truth for which transitions are legal;
docs/architecture.md draws the same machines. The server checks every change
against them (`JobState.can_become`) so that a late or duplicated report from an
agent can never move a job backwards.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a job is in its life.

    ::

        pending ─▶ bound ─▶ starting ─▶ running ─▶ succeeded | failed
           ▲         │          │          │
           │         └──────────┴──────────┴──▶ stopping ─▶ stopped
           │                                 ─▶ lost (node went down)
           └── preempted (train jobs, issue 3) ◀─┘

    - ``pending``: accepted and waiting for the scheduler; ``reason`` says why.
    - ``bound``: the scheduler gave it a node and devices; the node's agent has not yet
      acknowledged. The devices are held from this moment.
    - ``starting``: the agent accepted the binding and is preparing the runtime
      (work directory, user account; image pull for containers).
    - ``running``: the job's process (group) is alive on its node.
    - ``stopping``: someone asked the job to stop (delete, preemption, time limit); the
      agent is sending SIGTERM, waiting the grace period, then SIGKILL.
    - ``succeeded`` / ``failed``: the process exited with code 0 / non-zero by itself.
    - ``stopped``: the process was stopped on request (its exit code is still recorded).
    - ``preempted``: stopped to make room for another job; train jobs go back to pending.
    - ``lost``: its node stopped reporting for longer than the node's down timeout.
    """

    PENDING = "pending"
    BOUND = "bound"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    PREEMPTED = "preempted"
    LOST = "lost"

    @property
    def is_terminal(self) -> bool:
        """True when nothing will ever run for this job again."""
        return self in _TERMINAL_JOB_STATES

    @property
    def holds_devices(self) -> bool:
        """True while the job's devices must not be given to anyone else."""
        return self in _DEVICE_HOLDING_JOB_STATES

    def can_become(self, new: JobState) -> bool:
        """Whether the state machine allows ``self → new``."""
        return new in _JOB_TRANSITIONS[self]


_TERMINAL_JOB_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED, JobState.LOST}
)
_DEVICE_HOLDING_JOB_STATES = frozenset(
    {JobState.BOUND, JobState.STARTING, JobState.RUNNING, JobState.STOPPING}
)
_JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.BOUND, JobState.STOPPED}),
    JobState.BOUND: frozenset(
        {
            JobState.STARTING,
            JobState.RUNNING,
            JobState.STOPPING,
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.LOST,
            JobState.PREEMPTED,
        }
    ),
    JobState.STARTING: frozenset(
        {
            JobState.RUNNING,
            JobState.STOPPING,
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.LOST,
            JobState.PREEMPTED,
        }
    ),
    JobState.RUNNING: frozenset(
        {JobState.STOPPING, JobState.SUCCEEDED, JobState.FAILED, JobState.LOST, JobState.PREEMPTED}
    ),
    # STOPPING → FAILED: a gang whose worker failed stops its other workers first.
    JobState.STOPPING: frozenset(
        {JobState.STOPPED, JobState.FAILED, JobState.LOST, JobState.PREEMPTED}
    ),
    JobState.PREEMPTED: frozenset({JobState.PENDING, JobState.STOPPED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.STOPPED: frozenset(),
    JobState.LOST: frozenset(),
}

ACTIVE_JOB_STATES = frozenset(s for s in JobState if not s.is_terminal)


class NodeState(StrEnum):
    """Where a node is in its life.

    ::

        registering ─▶ ready ⇄ not_ready ─▶ down ─▶ ready (heartbeats resume)
                         ⇅
                     cordoned (admin: no new jobs; running jobs stay)

    - ``registering``: the agent presented a join token; inventory is being recorded.
    - ``ready``: heartbeats arrive on time; the scheduler may place jobs here.
    - ``not_ready``: heartbeats are late (past the not-ready timeout). No new jobs are
      placed, but running jobs are left alone: a short network blip must not kill work.
    - ``down``: no heartbeat for longer than the down timeout. Jobs bound to the node
      are marked ``lost``; when the agent comes back the node becomes ``ready`` again.
    - ``cordoned``: an admin took the node out of scheduling; running jobs finish.
    """

    REGISTERING = "registering"
    READY = "ready"
    NOT_READY = "not_ready"
    DOWN = "down"
    CORDONED = "cordoned"

    @property
    def schedulable(self) -> bool:
        """Whether the scheduler may place new jobs on a node in this state."""
        return self is NodeState.READY


class JobKind(StrEnum):
    """What sort of work a job is. Preemption rules differ (issue 3)."""

    TRAIN = "train"
    """Unattended; may be preempted and requeued."""
    INTERACTIVE = "interactive"
    """A shell or notebook; never preempted by reclaim while within quota."""


class Role(StrEnum):
    """What a user may do. Admins manage users, projects and nodes and see everything."""

    ADMIN = "admin"
    USER = "user"
