"""Fair shares (rule 1): divide the cluster's GPUs among projects, top-down.

At each level of the project tree the amount the parent got (the whole cluster at the
top) is divided among its children in three steps:

1. **Quota.** Each child gets ``min(quota, cap)``, where ``cap`` is what it can use:
   its demand (GPUs of its running and pending jobs), bounded by its limit and by the
   size of the node pools it may use. Higher queue priorities are served first; if the
   quotas of one priority do not fit in what is left, they are scaled down alike and
   rounded to whole GPUs (step 3).
2. **Over quota.** What is left goes to children that want more, in proportion to their
   weights, capped by ``cap``; a child that reaches its cap drops out and the rest is
   divided again among the others ("water-filling"), until nothing is left or nobody
   wants more. Priorities are again served in order: a lower priority only sees what
   the higher ones could not use. Weight 0 means no over-quota share.
3. **Whole GPUs.** The over-quota parts are rounded down, and the GPUs that rounding
   freed are handed one at a time to the largest remainders (ties: the older project).
   A quota that is met is kept exactly (a quota of 1.5 stays 1.5), and a share never
   exceeds ``cap`` (a project asking for 2.5 GPUs gets at most 2.5).

Children then divide their own share the same way. Everything here is a pure function
of numbers: no jobs, no nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

from corral.scheduler.projects import ProjectTree
from corral.scheduler.units import EPS, floor_units


@dataclass(frozen=True, slots=True)
class Claim:
    """What one child asks of its parent's share (GPUs)."""

    quota: float
    weight: float
    cap: float
    priority: int = 0
    order: int = 0


def divide(amount: float, claims: Sequence[Claim]) -> list[float]:
    """Fair shares of ``amount`` GPUs among ``claims``, in the same order (GPUs)."""
    guaranteed = _quota_parts(amount, claims)
    left = amount - sum(guaranteed)
    room = [max(0.0, c.cap - g) for c, g in zip(claims, guaranteed, strict=True)]
    extra = [0.0] * len(claims)
    for group in _by_priority(claims):
        left = _water_fill(left, group, claims, room, extra)
    rounded = _round_whole(extra, claims)
    return [min(claim.cap, g + r) for claim, g, r in zip(claims, guaranteed, rounded, strict=True)]


def _by_priority(claims: Sequence[Claim]) -> list[list[int]]:
    """Indices grouped by queue priority, highest first; each group in claim order."""
    ordered = sorted(range(len(claims)), key=lambda i: (-claims[i].priority, i))
    return [list(g) for _, g in groupby(ordered, key=lambda i: claims[i].priority)]


def _quota_parts(amount: float, claims: Sequence[Claim]) -> list[float]:
    given = [0.0] * len(claims)
    left = amount
    for group in _by_priority(claims):
        wants = {i: max(0.0, min(claims[i].quota, claims[i].cap)) for i in group}
        total = sum(wants.values())
        if total <= EPS:
            continue
        if total <= left + EPS:
            for i, want in wants.items():
                given[i] = want
            left -= total
            continue
        # Quotas that do not all fit (oversubscribed, or a parent's share smaller than
        # its children's quotas) are scaled down alike, then rounded to whole GPUs (the
        # guarantee is broken anyway; a fractional quota is only kept when it is met).
        scale = max(0.0, left) / total
        members = list(wants)
        parts = _round_whole([wants[i] * scale for i in members], [claims[i] for i in members])
        for i, part in zip(members, parts, strict=True):
            given[i] = min(part, wants[i])
            left -= given[i]
    return given


def _water_fill(
    amount: float,
    group: list[int],
    claims: Sequence[Claim],
    room: list[float],
    extra: list[float],
) -> float:
    """Share ``amount`` among ``group`` by weight, capped by ``room``; return what is left."""
    active = [i for i in group if claims[i].weight > 0 and room[i] > EPS]
    while amount > EPS and active:
        total_weight = sum(claims[i].weight for i in active)
        full = [i for i in active if room[i] <= amount * claims[i].weight / total_weight + EPS]
        if not full:
            for i in active:
                portion = amount * claims[i].weight / total_weight
                extra[i] += portion
                room[i] -= portion
            return 0.0
        # Those who are capped take what they want; the rest is shared again.
        for i in full:
            extra[i] += room[i]
            amount -= room[i]
            room[i] = 0.0
        active = [i for i in active if room[i] > EPS]
    return max(0.0, amount)


def _round_whole(parts: list[float], claims: Sequence[Claim]) -> list[float]:
    """Round down, then give the freed whole GPUs to the largest remainders."""
    floors = [floor_units(p) for p in parts]
    spare = floor_units(sum(parts)) - sum(floors)
    if spare > 0:
        # Remainders are compared at 1e-9 so that float noise never beats "the older".
        candidates = sorted(
            (i for i, p in enumerate(parts) if p - floors[i] > EPS),
            key=lambda i: (-round(parts[i] - floors[i], 9), claims[i].order, i),
        )
        for i in candidates[:spare]:
            floors[i] += 1
    return [float(f) for f in floors]


def divide_tree(tree: ProjectTree, caps: Sequence[float], amount: float) -> list[float]:
    """Fair share of every project of ``tree`` (GPUs), dividing ``amount`` top-down.

    ``caps[i]`` is what project ``i`` (with its subtree) can use: demand bounded by its
    limit and its pools. A department's share is what its children divide.
    """
    shares = [0.0] * len(tree)
    levels: list[tuple[Sequence[int], float]] = [(tree.top, amount)]
    while levels:
        children, available = levels.pop()
        claims = [
            Claim(
                quota=tree[i].quota,
                weight=tree[i].weight,
                cap=caps[i],
                priority=tree[i].priority,
                order=tree[i].order,
            )
            for i in children
        ]
        for i, share in zip(children, divide(available, claims), strict=True):
            shares[i] = share
            if tree[i].children:
                levels.append((tree[i].children, share))
    return shares
