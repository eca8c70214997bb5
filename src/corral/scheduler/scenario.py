"""Scenario files (docs/scheduler.md): a cluster, its projects and jobs, as a `Snapshot`.

`load_scenario` reads the YAML format of the scenario contract, checks every field and
raises one `ScenarioError` listing *all* problems, one line each, every line naming the
field: ``projects[2].quota: must be ≥ 0 (got -1)``. A scenario that loads is one the
policy can run: running jobs sit on real, free devices of nodes in pools they may use.

Jobs get ids 1, 2, … and their submission order from their position in the file (the
list is oldest first); projects get their age the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.scheduler.model import (
    DeviceView,
    MigSliceView,
    NodeView,
    ProjectView,
    SchedulerConfig,
    Snapshot,
)
from corral.scheduler.scenario_fields import GIB, Problems, Reader, parse_yaml, pools_phrase, show
from corral.scheduler.scenario_jobs import Catalog, JobsReader
from corral.scheduler.scenario_placements import Ledger, NodeSpec
from corral.scheduler.units import MIG_COMPUTE_SLICES, mig_profile_slices

DEFAULT_CYCLES = 5

TOP_KEYS = ("cycles", "nodes", "projects", "jobs", "usage", "usage_half_life", "expect")
NODE_KEYS = (
    "name", "gpus", "gpu_memory_gib", "pool", "mig", "schedulable", "unmanaged_gpus",
    "cpus", "memory_gib",
)  # fmt: skip
MIG_KEYS = ("gpu", "profile", "count", "unmanaged")
PROJECT_KEYS = ("name", "quota", "weight", "limit", "priority", "pools", "parent")


class ScenarioError(ValueError):
    """A scenario file that cannot be run. ``problems``: one line per problem found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Scenario:
    """A loaded scenario: the snapshot to schedule, how many cycles, and test expectations.

    ``job_names[id]`` is the name of the job with that id; ``expect`` is the file's
    ``expect:`` mapping as written (checked by the scenario tests, not here).
    """

    snapshot: Snapshot
    cycles: int
    job_names: Mapping[int, str]
    expect: Mapping[str, Any] | None = None
    source: str = "<scenario>"


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read and check the scenario file at ``path``; raise `ScenarioError` if it is bad."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError([f"cannot read {os.fspath(path)}: {exc}"]) from exc
    return parse_scenario(text, source=os.fspath(path))


def parse_scenario(text: str, *, source: str = "<scenario>") -> Scenario:
    """Check the scenario in YAML ``text``; raise `ScenarioError` listing every problem."""
    problems = Problems()
    data = parse_yaml(text, problems)
    if problems:
        raise ScenarioError(problems.lines)
    if data is None:
        data = {}
    top = Reader(data, "", problems, TOP_KEYS)  # top-level fields are named bare: "cycles"
    builder = _Builder(top, problems)
    scenario = builder.build(source)
    if problems:
        raise ScenarioError(problems.lines)
    return scenario


class _Builder:
    def __init__(self, top: Reader, problems: Problems) -> None:
        self.top = top
        self.problems = problems
        self.nodes: dict[str, NodeSpec] = {}
        self.views: list[NodeView] = []
        self.projects: dict[str, ProjectView] = {}
        self.parents: set[str] = set()
        self.project_index: dict[str, int] = {}
        """Project name → its position in the file (for messages)."""

    def _items(self, key: str) -> list[Any]:
        value = self.top.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.problems.add(key, f"must be a list (got {show(value)})")
            return []
        return value

    def build(self, source: str) -> Scenario:
        cycles = self.top.integer("cycles", DEFAULT_CYCLES, minimum=1)
        for i, item in enumerate(self._items("nodes")):
            self._node(i, item)
        for i, item in enumerate(self._items("projects")):
            self._project(i, item)
        self._check_tree()
        jobs = JobsReader(
            Catalog(self.projects, self.parents, self.known_pools),
            Ledger(self.nodes),
            self.problems,
        )
        for i, item in enumerate(self._items("jobs")):
            jobs.read(i, item)
        half_life = self.top.number("usage_half_life", None, strict=True)
        usage = self._usage()
        expect = self.top.raw("expect")
        if expect is not None and not isinstance(expect, Mapping):
            self.problems.add("expect", f"must be a mapping (got {show(expect)})")
            expect = None
        snapshot = Snapshot(
            nodes=tuple(self.views),
            running=tuple(j for j in jobs.views if j.placements),
            pending=tuple(j for j in jobs.views if not j.placements),
            projects=tuple(self.projects.values()),
            usage=usage,
            config=SchedulerConfig(usage_half_life=half_life),
        )
        return Scenario(
            snapshot=snapshot,
            cycles=cycles or DEFAULT_CYCLES,
            job_names={j.id: j.name for j in jobs.views},
            expect=expect,
            source=source,
        )

    # ------------------------------------------------------------------ nodes

    def _node(self, i: int, item: object) -> None:
        r = Reader(item, f"nodes[{i}]", self.problems, NODE_KEYS)
        name = r.text("name", required=True)
        if name is not None and name in self.nodes:
            r.bad("name", f"duplicate node {name!r}")
            name = None
        if not r.has("gpus"):
            r.bad("gpus", "is required (whole GPUs of the node, e.g. 8)")
        gpus = r.integer("gpus", 0, minimum=0) or 0
        memory = r.number("gpu_memory_gib", 80.0, strict=True) or 80.0
        spec = NodeSpec(
            name=name or f"nodes[{i}]",
            pool=r.text("pool", "default") or "default",
            gpus=gpus,
            gpu_memory=int(memory * GIB),
        )
        for j, gpu in enumerate(r.listing("unmanaged_gpus") or []):
            if isinstance(gpu, int) and not isinstance(gpu, bool) and 0 <= gpu < gpus:
                spec.unmanaged.add(gpu)
            else:
                r.bad(f"unmanaged_gpus[{j}]", f"no GPU {show(gpu)} on this node ({_range(gpus)})")
        for j, mig in enumerate(r.listing("mig") or []):
            self._mig(r.path(f"mig[{j}]"), mig, spec)
        schedulable = r.boolean("schedulable", True)
        cpus = r.integer("cpus", 0, minimum=0) or 0
        host_memory = r.number("memory_gib", 0.0) or 0.0
        if name is None:
            return
        self.nodes[name] = spec
        devices = tuple(
            DeviceView(
                index=g,
                uuid=f"{name}-gpu{g}",
                memory_bytes=spec.gpu_memory,
                busy_unmanaged=g in spec.unmanaged,
                mig=tuple(spec.mig.get(g, ())),
            )
            for g in range(gpus)
        )
        self.views.append(
            NodeView(
                name=name,
                schedulable=schedulable,
                devices=devices,
                cpu_cores=cpus,
                memory_bytes=int(host_memory * GIB),
                pool=spec.pool,
            )
        )

    def _mig(self, where: str, item: object, spec: NodeSpec) -> None:
        r = Reader(item, where, self.problems, MIG_KEYS)
        gpu = r.integer("gpu", None, minimum=0)
        if gpu is None and not r.has("gpu"):
            r.bad("gpu", "is required")
        elif gpu is not None and gpu >= spec.gpus:
            r.bad("gpu", f"no GPU {gpu} on this node ({_range(spec.gpus)})")
            gpu = None
        profile = r.text("profile", required=True)
        slices = mig_profile_slices(profile) if profile else None
        if profile is not None and slices is None:
            r.bad("profile", f"not a MIG profile such as 1g.10gb or 3g.40gb (got {profile!r})")
        count = r.integer("count", 1, minimum=1) or 0
        unmanaged = r.integer("unmanaged", 0, minimum=0) or 0
        if unmanaged > count:
            r.bad("unmanaged", f"must be ≤ count ({count}) (got {unmanaged})")
        if gpu is None or profile is None or slices is None:
            return
        used = spec.mig_slices_used.get(gpu, 0) + slices * count
        if used > MIG_COMPUTE_SLICES:
            self.problems.add(
                where, f"GPU {gpu}'s slices use {used} of its {MIG_COMPUTE_SLICES} compute slices"
            )
            return
        spec.mig_slices_used[gpu] = used
        memory = int(profile.split(".")[1].split("gb")[0]) * GIB
        views = spec.mig.setdefault(gpu, [])
        for n in range(count):
            same = sum(1 for v in views if v.profile == profile)
            views.append(
                MigSliceView(
                    id=f"{gpu}:{profile}:{same}",
                    gpu=gpu,
                    profile=profile,
                    compute_slices=slices,
                    memory_bytes=memory,
                    busy_unmanaged=n < unmanaged,
                )
            )

    # ------------------------------------------------------------------ projects

    def _project(self, i: int, item: object) -> None:
        r = Reader(item, f"projects[{i}]", self.problems, PROJECT_KEYS)
        name = r.text("name", required=True)
        if name is not None and name in self.projects:
            r.bad("name", f"duplicate project {name!r}")
            name = None
        quota = r.number("quota", 0.0)
        weight = r.number("weight", None)
        limit = r.number("limit", None)
        if quota is not None and limit is not None and limit < quota:
            r.bad("limit", f"must be ≥ its quota ({show(quota)}) (got {show(limit)})")
        priority = r.integer("priority", 0)
        pools: list[str] | None = None
        raw_pools = r.listing("pools")
        if raw_pools is not None:
            pools = []
            for j, pool in enumerate(raw_pools):
                if pool in self.known_pools:
                    pools.append(pool)
                else:
                    r.bad(f"pools[{j}]", f"unknown pool {show(pool)} ({self.pool_list})")
        parent = r.text("parent")
        if name is None:
            return
        self.projects[name] = ProjectView(
            name=name,
            quota=quota or 0.0,
            weight=weight,
            limit=limit,
            priority=priority or 0,
            pools=None if pools is None else tuple(pools),
            parent=parent,
            order=len(self.projects),
        )
        self.project_index[name] = i

    @property
    def known_pools(self) -> set[str]:
        return {spec.pool for spec in self.nodes.values()}

    @property
    def pool_list(self) -> str:
        return pools_phrase(self.known_pools)

    def _check_tree(self) -> None:
        where = self.project_index
        for name, view in self.projects.items():
            if view.parent is not None and view.parent not in self.projects:
                self.problems.add(
                    f"projects[{where[name]}].parent", f"unknown project {view.parent!r}"
                )
                self.projects[name] = _without_parent(view)
        reported: set[frozenset[str]] = set()
        for name in self.projects:
            chain = [name]
            while (parent := self.projects[chain[-1]].parent) is not None:
                if parent in chain:
                    loop = chain[chain.index(parent) :]
                    if frozenset(loop) not in reported:
                        reported.add(frozenset(loop))
                        arrows = " → ".join([*loop, parent])
                        self.problems.add("projects", f"parent cycle {arrows}")
                    break
                chain.append(parent)
        if reported:
            return
        children: dict[str, list[ProjectView]] = {}
        for view in self.projects.values():
            if view.parent is not None:
                children.setdefault(view.parent, []).append(view)
                self.parents.add(view.parent)
        for parent, kids in children.items():
            total = sum(kid.quota for kid in kids)
            if total > self.projects[parent].quota + 1e-9:
                self.problems.add(
                    f"projects[{where[parent]}].quota",
                    f"the quotas of its projects add up to {show(total)}, more than its quota "
                    f"({show(self.projects[parent].quota)})",
                )

    def _usage(self) -> Mapping[str, float]:
        raw = self.top.raw("usage")
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            self.problems.add("usage", f"must map project names to GPU-seconds (got {show(raw)})")
            return {}
        usage: dict[str, float] = {}
        for project, value in raw.items():
            if project not in self.projects:
                self.problems.add(f"usage.{project}", f"unknown project {project!r}")
            elif not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                self.problems.add(
                    f"usage.{project}", f"must be GPU-seconds ≥ 0 (got {show(value)})"
                )
            else:
                usage[str(project)] = float(value)
        return usage


def _without_parent(view: ProjectView) -> ProjectView:
    return ProjectView(
        name=view.name,
        quota=view.quota,
        weight=view.weight,
        limit=view.limit,
        priority=view.priority,
        pools=view.pools,
        parent=None,
        order=view.order,
    )


def _range(gpus: int) -> str:
    return f"it has GPUs 0-{gpus - 1}" if gpus else "it has no GPUs"
