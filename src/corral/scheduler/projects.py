"""Projects as a tree: departments (parents) over projects, to any depth.

The policy works on tree indices, not names: each project gets an index, its path to
the top (itself first), its children, and the values it inherits (node pools are the
intersection along the path; queue priority is compared top-down).

Jobs name projects; a job whose project the snapshot does not list (a server that does
not send projects yet, or a project deleted while its jobs wait) gets an *implicit*
project: quota 0 and weight 1, so such projects share what nobody's quota claims.
A snapshot that names an unknown parent, or parents in a cycle, is not a reason to
stop scheduling: the offending link is dropped (the project becomes top-level).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from corral.scheduler.model import ProjectView

IMPLICIT_WEIGHT = 1.0
"""Over-quota weight of a project that jobs name but the snapshot does not list."""


@dataclass(slots=True)
class ProjectNode:
    """One project or department. Amounts in GPUs; ``parent`` -1 = top level."""

    idx: int
    name: str
    quota: float
    weight: float
    limit: float | None
    priority: int
    own_pools: frozenset[str] | None
    parent: int
    order: int
    implicit: bool = False
    children: list[int] = field(default_factory=list)
    pools: frozenset[str] | None = None
    """Node pools it may use: its own intersected with every ancestor's (None = all)."""
    path: tuple[int, ...] = ()
    """Itself, its parent, … up to its top-level department."""
    rank: tuple[int, ...] = ()
    """Queue priorities from the top down, negated: smaller sorts first (served first)."""

    @property
    def is_department(self) -> bool:
        return bool(self.children)


class ProjectTree:
    """All projects of a snapshot, indexed; ``top`` are the children of the (virtual) root."""

    def __init__(self, nodes: list[ProjectNode]) -> None:
        self.nodes = nodes
        self.by_name = {node.name: node.idx for node in nodes}
        self.top = [n.idx for n in nodes if n.parent < 0]
        for node in nodes:
            if node.parent >= 0:
                nodes[node.parent].children.append(node.idx)
        for node in nodes:
            # Children lists are in project order (the tie-breaker everywhere).
            node.children.sort(key=lambda i: nodes[i].order)
            self._inherit(node)
        self.top.sort(key=lambda i: nodes[i].order)

    def _inherit(self, node: ProjectNode) -> None:
        path = [node.idx]
        pools = node.own_pools
        while (parent := self.nodes[path[-1]].parent) >= 0:
            path.append(parent)
            other = self.nodes[parent].own_pools
            if other is not None:
                pools = other if pools is None else pools & other
        node.path = tuple(path)
        node.pools = pools
        node.rank = tuple(-self.nodes[i].priority for i in reversed(path))

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, idx: int) -> ProjectNode:
        return self.nodes[idx]

    def siblings_of(self, idx: int) -> Sequence[int]:
        """Children of ``idx``'s parent (the top level for a top-level project)."""
        parent = self.nodes[idx].parent
        return self.top if parent < 0 else self.nodes[parent].children

    def subtree(self, idx: int) -> list[int]:
        """``idx`` and every project below it, parents before children."""
        out = [idx]
        for i in out:  # grows while iterating: a breadth-first walk
            out.extend(self.nodes[i].children)
        return out

    def bottom_up(self) -> list[int]:
        """Every index, children before their parents."""
        order: list[int] = []
        for top in self.top:
            order.extend(self.subtree(top))
        return order[::-1]


def build_tree(projects: Sequence[ProjectView], job_projects: Iterable[str]) -> ProjectTree:
    """Index ``projects`` (and an implicit project for every other name in ``job_projects``)."""
    known = sorted(enumerate(projects), key=lambda item: (item[1].order, item[0]))
    nodes: list[ProjectNode] = []
    names: dict[str, int] = {}
    for _, view in known:
        if view.name in names:
            continue  # a duplicate name: the first (older) one wins
        names[view.name] = len(nodes)
        nodes.append(
            ProjectNode(
                idx=len(nodes),
                name=view.name,
                quota=max(0.0, view.quota),
                weight=max(0.0, view.over_quota_weight),
                limit=None if view.limit is None else max(0.0, view.limit),
                priority=view.priority,
                own_pools=None if view.pools is None else frozenset(view.pools),
                parent=-1,
                order=len(nodes),
            )
        )
    for _, view in known:
        idx = names[view.name]
        parent = names.get(view.parent) if view.parent else None
        if parent is not None and nodes[idx].parent < 0 and not _reaches(nodes, parent, idx):
            nodes[idx].parent = parent
    for name in sorted(set(job_projects) - names.keys()):
        names[name] = len(nodes)
        nodes.append(
            ProjectNode(
                idx=len(nodes),
                name=name,
                quota=0.0,
                weight=IMPLICIT_WEIGHT,
                limit=None,
                priority=0,
                own_pools=None,
                parent=-1,
                order=len(nodes),
                implicit=True,
            )
        )
    return ProjectTree(nodes)


def _reaches(nodes: list[ProjectNode], start: int, target: int) -> bool:
    """True when walking up the parents from ``start`` meets ``target`` (a cycle)."""
    seen = 0
    current = start
    while current >= 0 and seen <= len(nodes):
        if current == target:
            return True
        current = nodes[current].parent
        seen += 1
    return False
