"""Order: which project is served next, and which project yields first (smaller = first).

Projects are served by queue priority (top-down through departments), then the one
furthest below its fair share (allocated / fair share, smallest first), then — when
``SchedulerConfig.usage_half_life`` is set — the one that used least of its share
recently, then the older one. Victims come from the other end: lowest queue priority,
then furthest above share, then most recent usage, then the newer project.

Jobs inside a project are ranked by `JobInfo.rank` (priority, interactive before train,
older first) and give way as victims by `JobInfo.victim_rank` (lowest priority first,
then newest).

Recent usage (Slurm's "fair-share factor" idea): ``Snapshot.usage`` holds each
project's GPU-seconds, decayed with the half-life. A project's *usage factor* is that
usage per GPU of its fair share. It only breaks ties: a project that used far more than
its share recently yields first among projects that are otherwise equal.
"""

from __future__ import annotations

from collections.abc import Mapping

from corral.scheduler.projects import ProjectTree
from corral.scheduler.state import CycleState


def usage_factors(
    tree: ProjectTree, usage: Mapping[str, float], fair: list[float], enabled: bool
) -> list[float]:
    """Per project: recent usage per GPU of its fair share (GPU-seconds / GPU); 0 when off.

    A department's usage is its own entry plus its subtree's. The share is counted as at
    least one GPU, so that projects without a share still compare by what they used.
    Only ever compared between siblings, to break ties.
    """
    if not enabled or not usage:
        return [0.0] * len(tree)
    used = [max(0.0, float(usage.get(node.name, 0.0))) for node in tree.nodes]
    for i in tree.bottom_up():
        parent = tree[i].parent
        if parent >= 0:
            used[parent] += used[i]
    return [used[i] / max(fair[i], 1.0) for i in range(len(tree))]


class Order:
    """Sort keys over a cycle's live numbers (ratios change as jobs bind and yield)."""

    def __init__(self, state: CycleState) -> None:
        self.state = state
        snapshot = state.snapshot
        self.usage = usage_factors(
            state.tree,
            snapshot.usage,
            state.fair,
            snapshot.config.usage_half_life is not None,
        )

    def serve_key(self, leaf: int) -> tuple[tuple[int, ...], float, float, float, int]:
        """Which project gets the next job considered (smallest first)."""
        state = self.state
        node = state.tree[leaf]
        ratio = state.ratio(leaf)
        # Among projects with no share at all, the one holding least goes first.
        held = state.allocated[leaf] if ratio == float("inf") else 0.0
        return (node.rank, ratio, held, self.usage[leaf], node.order)

    def yield_key(self, idx: int) -> tuple[int, float, float, float, int]:
        """Which sibling gives up a job first when victims are needed (smallest first)."""
        state = self.state
        excess = state.allocated[idx] - state.fair[idx]
        return (
            state.tree[idx].priority,
            -state.ratio(idx),
            -excess,
            -self.usage[idx],
            -state.tree[idx].order,
        )
