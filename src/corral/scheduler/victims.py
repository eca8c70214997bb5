"""Victims (rules 3 and 4): the running train jobs to preempt so that a pending job fits.

The candidates come in a line, fairest victim first (see `reclaim_line` and
`priority_line`). The search walks that line and adds each usable candidate to what
would be freed on its node(s); it stops at the first candidate after which the pending
job fits — on one node for a single-worker job, in one pool for a gang. So the victims
are the shortest fair prefix of the line that makes room: no victim later in line is
taken while an earlier one would do. The chosen set is then pruned from its least fair
end: a victim whose removal still leaves room is dropped, so no more jobs are preempted
than the pending job needs.

Jobs are preempted whole: a gang victim frees all of its workers' devices. Jobs that
were bound in this cycle, interactive jobs and jobs on unschedulable nodes are never in
a line.

Reclaim has a second condition on each victim (``Gate``): its project — and every
department between it and the point where the victim's and the asker's project trees
meet — must still be above its fair share (or its quota, when the asker is below its
quota) *after* the victims already counted on that node. A project just at its share
does not lose another job.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from corral.scheduler.cluster import NodeState
from corral.scheduler.jobs import JobInfo
from corral.scheduler.order import Order
from corral.scheduler.state import CycleState
from corral.scheduler.units import EPS

Mode = Literal["share", "quota"]
"""Reclaim from projects above their fair share, or (asker below quota) above quota."""


@dataclass(frozen=True)
class Relief:
    """Victims whose preemption makes room for a job: on ``node``, or in ``pool`` (gangs)."""

    victims: tuple[JobInfo, ...]
    node: int | None = None
    pool: int | None = None


class Freed:
    """What a set of victims would free on one node."""

    __slots__ = ("cpus", "emptied", "memory", "mig", "shared_bytes", "shared_jobs", "whole")

    def __init__(self) -> None:
        self.whole: dict[int, None] = {}
        self.shared_bytes: dict[int, int] = {}
        self.shared_jobs: dict[int, int] = {}
        self.emptied = 0
        """Shared GPUs all of whose jobs are among the victims (they become whole)."""
        self.mig: dict[str, int] = {}
        self.cpus = 0.0
        self.memory = 0

    def add(self, victim: JobInfo, node: NodeState) -> None:
        for placement in victim.placements:
            if placement.node != node.name:
                continue
            if victim.shape == "mig":
                self.mig[victim.profile] = self.mig.get(victim.profile, 0) + 1
            elif victim.shape in ("fraction", "memory"):
                for gpu in placement.gpu_ids[:1]:
                    if gpu in node.gpu_memory:
                        used = victim.share_bytes(node.gpu_memory[gpu])
                        self.shared_bytes[gpu] = self.shared_bytes.get(gpu, 0) + used
                        count = self.shared_jobs[gpu] = self.shared_jobs.get(gpu, 0) + 1
                        if count == node.shared_jobs.get(gpu, 0):
                            self.emptied += 1
            else:
                for gpu in placement.gpu_ids:
                    self.whole[gpu] = None
            self.cpus += victim.cpus
            self.memory += victim.host_memory

    def whole_gpus(self) -> int:
        """Whole GPUs these victims free: their own plus shared GPUs they empty."""
        return len(self.whole) + self.emptied


def freed_by(victims: Iterable[JobInfo], node: NodeState) -> Freed:
    freed = Freed()
    for victim in victims:
        freed.add(victim, node)
    return freed


def _host_room(job: JobInfo, node: NodeState, freed: Freed) -> bool:
    return (
        node.cpus + freed.cpus + 1e-9 >= job.cpus and node.memory + freed.memory >= job.host_memory
    )


def fits_node(job: JobInfo, node: NodeState, freed: Freed) -> bool:
    """Would one worker of ``job`` fit on ``node`` once ``freed`` is free?"""
    if not _host_room(job, node, freed):
        return False
    if job.shape == "whole":
        return len(node.free) + freed.whole_gpus() >= job.gpus
    if job.shape in ("fraction", "memory"):
        for gpu in (*node.free, *freed.whole):
            if job.share_bytes(node.gpu_memory[gpu]) <= node.gpu_memory[gpu]:
                return True
        for gpu, free in node.shared_free.items():
            total = node.gpu_memory[gpu]
            if node.shared_jobs[gpu] <= freed.shared_jobs.get(gpu, 0):
                free = total
            else:
                free += freed.shared_bytes.get(gpu, 0)
            if job.share_bytes(total) <= free:
                return True
        return False
    if job.shape == "mig":
        return bool(freed.mig.get(job.profile) or node.mig_free.get(job.profile))
    return job.shape == "host"


def node_slots(job: JobInfo, node: NodeState, freed: Freed | None) -> int:
    """How many ``job.gpus``-GPU gang workers fit on ``node`` (after ``freed``)."""
    slots = (len(node.free) + (freed.whole_gpus() if freed else 0)) // job.gpus
    if job.cpus:
        cpus = node.cpus + (freed.cpus if freed else 0.0)
        slots = min(slots, int((cpus + 1e-9) // job.cpus))
    if job.host_memory:
        memory = node.memory + (freed.memory if freed else 0)
        slots = min(slots, memory // job.host_memory)
    return max(0, slots)


def _useful(job: JobInfo, victim: JobInfo) -> bool:
    if job.cpus or job.host_memory:
        return True  # any victim frees CPUs and memory
    if job.shape == "mig":
        return victim.shape == "mig" and victim.profile == job.profile
    return victim.shape in ("whole", "fraction", "memory")


class Gate:
    """Reclaim's condition on victims: their side of the tree stays above its threshold.

    ``top_of[leaf]`` is the highest project on the victim's side (a child of the point
    where the trees meet); ``threshold[i]`` is the fair share (``share`` mode) or the
    smaller of fair share and quota (``quota`` mode). Counted per ``scope`` (a node, or
    a pool for gangs), because only victims that end up chosen together lower a project.
    """

    def __init__(self, state: CycleState, threshold: list[float], top_of: dict[int, int]) -> None:
        self.allocated = state.allocated
        self.threshold = threshold
        self.taken: dict[tuple[int, int], float] = {}
        self.sides: dict[int, tuple[int, ...]] = {}
        """Leaf → its path up to (and with) its top: the projects a victim lowers."""
        for leaf, top in top_of.items():
            path = state.tree[leaf].path
            self.sides[leaf] = path[: path.index(top) + 1]

    def admits(self, victim: JobInfo, scope: int) -> bool:
        allocated, threshold, taken = self.allocated, self.threshold, self.taken
        for i in self.sides[victim.leaf]:
            if allocated[i] - taken.get((i, scope), 0.0) <= threshold[i] + EPS:
                return False
        return True

    def take(self, victim: JobInfo, scope: int) -> None:
        for i in self.sides[victim.leaf]:
            self.taken[(i, scope)] = self.taken.get((i, scope), 0.0) + victim.amount


def find_relief(
    state: CycleState,
    job: JobInfo,
    line: Iterable[JobInfo],
    gate: Gate | None,
    min_freed: float = 0.0,
) -> Relief | None:
    """The shortest fair prefix of ``line`` that makes room for ``job``, pruned; or None.

    ``min_freed``: the victims must also add up to at least this many GPUs (a project
    swapping jobs at its limit or share must give up as much as it takes).
    """
    cluster = state.cluster
    gang = job.shape == "whole" and job.workers > 1
    pools = job.pools
    freed: dict[int, Freed] = {}
    chosen: dict[int, list[JobInfo]] = {}
    slots: dict[int, int] = {}
    for victim in line:
        if victim.gone or not _useful(job, victim):
            continue
        for idx in victim.nodes:
            node = cluster.nodes[idx]
            if node.pool not in pools:
                continue
            scope = node.pool if gang else idx
            picked = chosen.setdefault(scope, [])
            if victim not in picked:
                if gate is not None:
                    if not gate.admits(victim, scope):
                        continue
                    gate.take(victim, scope)
                picked.append(victim)
            node_freed = freed.setdefault(idx, Freed())
            enough = sum(v.amount for v in picked) + EPS >= min_freed
            if gang:
                if scope not in slots:
                    slots[scope] = _pool_slots(state, job, scope)
                before = node_slots(job, node, node_freed)
                node_freed.add(victim, node)
                slots[scope] += node_slots(job, node, node_freed) - before
                if enough and slots[scope] >= job.workers:
                    return _prune_gang(state, job, scope, picked, min_freed)
            else:
                node_freed.add(victim, node)
                if enough and fits_node(job, node, node_freed):
                    return _prune_node(job, node, picked, min_freed)
    return None


def _pool_slots(state: CycleState, job: JobInfo, pool: int) -> int:
    cluster = state.cluster
    if not job.cpus and not job.host_memory:
        return cluster.pools[pool].worker_slots(job.gpus)
    return sum(node_slots(job, cluster.nodes[i], None) for i in cluster.pools[pool].nodes)


def _prune_node(job: JobInfo, node: NodeState, picked: list[JobInfo], min_freed: float) -> Relief:
    victims = list(picked)
    for victim in reversed(picked):  # least fair first
        trial = [v for v in victims if v is not victim]
        enough = sum(v.amount for v in trial) + EPS >= min_freed
        if enough and fits_node(job, node, freed_by(trial, node)):
            victims = trial
    return Relief(victims=tuple(victims), node=node.idx)


def _prune_gang(
    state: CycleState, job: JobInfo, pool: int, picked: list[JobInfo], min_freed: float
) -> Relief:
    cluster = state.cluster
    on_node: dict[int, list[JobInfo]] = {}
    for victim in picked:
        for idx in _nodes_in_pool(state, victim, pool):
            on_node.setdefault(idx, []).append(victim)
    gain = {  # extra workers each node takes thanks to its victims
        idx: _gain(job, cluster.nodes[idx], victims) for idx, victims in on_node.items()
    }
    room = _pool_slots(state, job, pool) + sum(gain.values())
    victims = list(picked)
    for victim in reversed(picked):  # least fair first
        nodes = _nodes_in_pool(state, victim, pool)
        trial = {
            idx: _gain(job, cluster.nodes[idx], [v for v in on_node[idx] if v is not victim])
            for idx in nodes
        }
        after = room + sum(trial[idx] - gain[idx] for idx in nodes)
        enough = sum(v.amount for v in victims) - victim.amount + EPS >= min_freed
        if enough and after >= job.workers:
            room = after
            victims.remove(victim)
            for idx in nodes:
                on_node[idx].remove(victim)
                gain[idx] = trial[idx]
    return Relief(victims=tuple(victims), pool=pool)


def _gain(job: JobInfo, node: NodeState, victims: list[JobInfo]) -> int:
    return node_slots(job, node, freed_by(victims, node)) - node_slots(job, node, None)


def _nodes_in_pool(state: CycleState, victim: JobInfo, pool: int) -> list[int]:
    nodes = state.cluster.nodes
    return [idx for idx in victim.nodes if nodes[idx].pool == pool]


# ---------------------------------------------------------------------- the lines


def reclaim_line(
    state: CycleState, order: Order, job: JobInfo, mode: Mode
) -> tuple[tuple[int, ...], Gate, Iterator[JobInfo]]:
    """Victims for reclaim by ``job``, fairest first: (their top projects, gate, line).

    Walks up from the asker's project: at each level, siblings above their threshold
    may give victims — as long as the asker's side can take the job without going over
    its own fair share (a department already at its share cannot grow by taking from
    another department; its projects can still take from each other).
    """
    tree = state.tree
    allocated, fair = state.allocated, state.fair
    if mode == "share":
        threshold = fair
        room = fair
    else:
        threshold = [min(f, q) for f, q in zip(fair, state.quota, strict=True)]
        room = threshold
    tops: list[int] = []
    current = job.leaf
    while allocated[current] + job.amount <= room[current] + EPS:
        tops.extend(
            s
            for s in tree.siblings_of(current)
            if s != current and allocated[s] > threshold[s] + EPS
        )
        if tree[current].parent < 0:
            break
        current = tree[current].parent
    tops.sort(key=order.yield_key)
    top_of: dict[int, int] = {}
    leaves: list[int] = []
    for top in tops:
        stack = [top]
        while stack:  # depth-first, the fairest child first
            idx = stack.pop()
            children = [c for c in tree[idx].children if allocated[c] > threshold[c] + EPS]
            if not tree[idx].children:
                top_of[idx] = top
                leaves.append(idx)
            stack.extend(sorted(children, key=order.yield_key, reverse=True))
    line = (victim for leaf in leaves for victim in state.victims[leaf])
    return tuple(tops), Gate(state, threshold, top_of), line


def leaves_free(job: JobInfo, victims: Iterable[JobInfo]) -> bool:
    """Did ``victims`` free anything that ``job`` (placed since) does not hold now?"""
    victims = list(victims)
    if sum(v.amount for v in victims) > job.amount + EPS:
        return True
    return not _devices(victims) <= _devices([job])


def _devices(jobs: Iterable[JobInfo]) -> set[tuple[str, object]]:
    out: set[tuple[str, object]] = set()
    for job in jobs:
        for p in job.placements:
            out.update((p.node, g) for g in p.gpu_ids)
            if p.mig_slice is not None:
                out.add((p.node, p.mig_slice))
    return out


def outranks(job: JobInfo, victim: JobInfo) -> bool:
    """Rule 4: higher priority, or an interactive job over a train job of equal priority."""
    return job.priority > victim.priority or (
        job.priority == victim.priority and job.interactive and not victim.interactive
    )


def priority_line(state: CycleState, job: JobInfo) -> Iterator[JobInfo]:
    """Train jobs of the asker's own project that it outranks, lowest priority first."""
    for victim in state.victims[job.leaf]:
        if not outranks(job, victim):
            return  # the list is sorted by priority: nobody further on is outranked
        yield victim
