"""Run the real policy over a scenario for a number of cycles (``corral sim scenario``).

After each cycle the decisions are applied the way the server applies them, minus the
waiting: bound jobs run at once on their placements, preempted jobs are pending again
(keeping their place in the submission order). The run stops early when a cycle
changes nothing — the state is then stable (rule 5).

The result has the documented JSON shape (`SimResult.to_json`):
``{"jobs": {name: …}, "projects": {name: …}, "events": [...]}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from corral.scheduler.fairshare import FairSharePolicy
from corral.scheduler.model import (
    Decisions,
    JobView,
    Placement,
    Policy,
    ProjectShare,
    Snapshot,
)
from corral.scheduler.scenario import Scenario


@dataclass(frozen=True)
class Event:
    """Something that happened to a job in a cycle: bound to devices, or preempted."""

    cycle: int
    job: str
    action: Literal["bound", "preempted"]
    placements: tuple[Placement, ...] = ()
    by: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cycle": self.cycle, "job": self.job, "action": self.action}
        if self.action == "bound":
            out.update(_where(self.placements))
        else:
            out["by"] = self.by
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class JobOutcome:
    """Where a job ended up: running at ``placements``, or pending for ``reason``."""

    state: Literal["running", "pending"]
    placements: tuple[Placement, ...] = ()
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.state == "pending":
            return {"state": "pending", "reason": self.reason}
        return {"state": "running", **_where(self.placements)}


@dataclass
class SimResult:
    """The outcome of a simulation. ``converged``: the last cycle changed nothing."""

    jobs: dict[str, JobOutcome]
    projects: dict[str, ProjectShare]
    events: list[Event]
    cycles_run: int
    converged: bool
    snapshot: Snapshot
    """The final state, ready to be scheduled again."""
    bound: dict[int, int] = field(default_factory=dict)
    """Cycle → how many jobs were bound in it."""
    preempted: dict[int, int] = field(default_factory=dict)
    """Cycle → how many jobs were preempted in it."""

    def to_json(self) -> dict[str, Any]:
        """The documented output: jobs, projects and events, JSON-compatible."""
        return {
            "jobs": {name: outcome.to_json() for name, outcome in self.jobs.items()},
            "projects": {
                name: {
                    "allocated": gpu_number(share.allocated),
                    "quota": gpu_number(share.quota),
                    "fair_share": gpu_number(share.fair_share),
                    "pending": share.pending,
                }
                for name, share in self.projects.items()
            },
            "events": [event.to_json() for event in self.events],
        }


def gpu_number(value: float) -> int | float:
    """An amount of GPUs for JSON: ``8`` rather than ``8.0``; fractions to 4 places."""
    rounded = round(value, 4)
    return int(rounded) if rounded == int(rounded) else rounded


def _where(placements: tuple[Placement, ...]) -> dict[str, Any]:
    """``node``/``gpu_ids`` of one worker, or lists of them (one per worker) for gangs."""
    out: dict[str, Any]
    if len(placements) == 1:
        only = placements[0]
        out = {"node": only.node, "gpu_ids": list(only.gpu_ids)}
        if only.mig_slice is not None:
            out["mig_slice"] = only.mig_slice
        return out
    return {
        "node": [p.node for p in placements],
        "gpu_ids": [list(p.gpu_ids) for p in placements],
    }


def run_simulation(
    scenario: Scenario, *, cycles: int | None = None, policy: Policy | None = None
) -> SimResult:
    """Schedule ``scenario`` for up to ``cycles`` cycles (default: the scenario's own).

    ``policy`` defaults to `FairSharePolicy`. Stops early once a cycle changes nothing.
    """
    policy = policy or FairSharePolicy()
    limit = scenario.cycles if cycles is None else cycles
    names = scenario.job_names
    snapshot = scenario.snapshot
    running = {job.id: job for job in snapshot.running}
    pending = {job.id: job for job in snapshot.pending}
    events: list[Event] = []
    result = SimResult({}, {}, events, 0, False, snapshot)
    decisions: Decisions | None = None
    projects_of = {job.id: job.project for job in (*snapshot.running, *snapshot.pending)}
    # Why each job was last preempted, as the server shows it while the job waits again.
    preempted_note: dict[int, str] = {}
    for cycle in range(1, limit + 1):
        decisions = policy.schedule(snapshot)
        result.cycles_run = cycle
        if not decisions.bindings and not decisions.preemptions:
            result.converged = True
            break
        for preemption in decisions.preemptions:
            job = running.pop(preemption.job_id)
            pending[job.id] = replace(job, placements=())
            by = preemption.by_job_id
            preempted_note[job.id] = (
                f"preempted by {names.get(by)} of {projects_of.get(by)}: {preemption.reason}"
            )
            events.append(
                Event(
                    cycle,
                    names[job.id],
                    "preempted",
                    by=names.get(preemption.by_job_id),
                    reason=preemption.reason,
                )
            )
        for binding in decisions.bindings:
            job = pending.pop(binding.job_id)
            running[job.id] = replace(job, placements=binding.placements)
            events.append(Event(cycle, names[job.id], "bound", placements=binding.placements))
        result.bound[cycle] = len(decisions.bindings)
        result.preempted[cycle] = len(decisions.preemptions)
        snapshot = replace(
            snapshot, running=_in_order(running.values()), pending=_in_order(pending.values())
        )
    result.snapshot = snapshot
    if decisions is not None:
        result.projects = dict(decisions.projects)
    # Reasons must describe the final state: if the last cycle still changed things, ask
    # the policy once more (without applying) why the jobs left pending still wait.
    final = decisions if result.converged or decisions is None else policy.schedule(snapshot)
    starting = {b.job_id for b in final.bindings} if final is not None else set()
    for job_id, name in names.items():
        if job_id in running:
            result.jobs[name] = JobOutcome("running", running[job_id].placements)
            continue
        if job_id in starting:
            reason = f"would start in cycle {result.cycles_run + 1} (the simulation stopped)"
        elif final is not None:
            reason = final.reasons.get(job_id, "waiting")
            if job_id in preempted_note:
                reason = f"{preempted_note[job_id]}; now: {reason}"
        else:
            reason = "not scheduled (0 cycles)"
        result.jobs[name] = JobOutcome("pending", reason=reason)
    return result


def _in_order(jobs: Any) -> tuple[JobView, ...]:
    return tuple(sorted(jobs, key=lambda j: (j.order, j.id)))
