"""Fair shares (rule 1): quota first, weights over quota, priorities, whole GPUs, nesting."""

from __future__ import annotations

import pytest
from sched_factories import project

from corral.scheduler.divide import Claim, divide, divide_tree
from corral.scheduler.projects import build_tree

INF = 1e9


def c(quota: float, weight: float | None = None, cap: float = INF, **kw: int) -> Claim:
    return Claim(quota=quota, weight=quota if weight is None else weight, cap=cap, **kw)


@pytest.mark.parametrize(
    ("amount", "claims", "shares"),
    [
        pytest.param(16, [c(4), c(2), c(2), c(8, cap=0)], [8, 4, 4, 0], id="reference-phase-1"),
        pytest.param(16, [c(4), c(2), c(2), c(8)], [4, 2, 2, 8], id="reference-phase-2"),
        pytest.param(8, [c(6, cap=2), c(2)], [2, 6], id="idle-quota-is-lent"),
        pytest.param(16, [c(0, 1), c(0, 3), c(0, 4)], [2, 6, 8], id="weights"),
        pytest.param(
            16, [c(0, 1, cap=2), c(0, 1), c(0, 2)], [2, 5, 9], id="water-filling-then-rounding"
        ),
        pytest.param(7, [c(0, 2), c(0, 3), c(0, 5)], [1, 2, 4], id="largest-remainder"),
        pytest.param(10, [c(0, 1), c(0, 1), c(0, 1)], [4, 3, 3], id="tie-goes-to-the-older"),
        pytest.param(
            10,
            [c(0, 1, order=2), c(0, 1, order=0), c(0, 1, order=1)],
            [3, 4, 3],
            id="older-means-order-not-position",
        ),
        pytest.param(8, [c(2, 4), c(2, 1, priority=1)], [2, 6], id="priority-served-first"),
        pytest.param(8, [c(0, 0, cap=5), c(0, 0, cap=5)], [0, 0], id="weight-0-no-over-quota"),
        pytest.param(4, [c(4), c(4)], [2, 2], id="oversubscribed-quotas-scaled-alike"),
        pytest.param(8, [c(4), c(4), c(4)], [3, 3, 2], id="oversubscribed-quotas-rounded-whole"),
        pytest.param(4, [c(4, priority=1), c(4)], [4, 0], id="oversubscribed-priority-first"),
        pytest.param(3, [c(1.5), c(1.5)], [1.5, 1.5], id="fractional-quotas-kept"),
        # The over-quota parts (1.25 each) are rounded down; the half GPU left is unshared.
        pytest.param(4, [c(1.5, 1), c(0, 1)], [2.5, 1], id="quota-part-exact-rest-rounded"),
        pytest.param(4, [c(0, 1, cap=2.5), c(0, 1)], [2, 2], id="fractional-cap-rounded-down"),
        pytest.param(5, [c(0, 1, cap=2.5), c(0, 1)], [2.5, 2], id="share-never-above-cap"),
        pytest.param(0, [c(2), c(2)], [0, 0], id="nothing-to-divide"),
        pytest.param(8, [], [], id="nobody"),
    ],
)
def test_divide(amount: float, claims: list[Claim], shares: list[float]) -> None:
    assert divide(amount, claims) == pytest.approx(shares)


def test_shares_never_exceed_the_amount_or_the_caps() -> None:
    claims = [c(1.3, 2, cap=3.7), c(0.4, 1, cap=9), c(2, 0, cap=1), c(0, 5, cap=0.5)]
    for amount in (0.5, 1, 2.9, 4, 6.6, 11, 30):
        shares = divide(amount, claims)
        assert sum(shares) <= amount + 1e-6
        assert all(s <= claim.cap + 1e-6 for s, claim in zip(shares, claims, strict=True))


def test_departments_divide_top_down() -> None:
    tree = build_tree(
        [
            project("dept-a", 8, order=0),
            project("a1", 4, order=1, parent="dept-a"),
            project("a2", 4, order=2, parent="dept-a"),
            project("dept-b", 8, order=3),
            project("b1", 8, order=4, parent="dept-b"),
        ],
        (),
    )
    demand = {"a1": 10, "a2": 10, "b1": 2, "dept-a": 20, "dept-b": 2}
    caps = [float(demand[n.name]) for n in tree.nodes]
    shares = dict(zip([n.name for n in tree.nodes], divide_tree(tree, caps, 16), strict=True))
    assert shares == {"dept-a": 14, "a1": 7, "a2": 7, "dept-b": 2, "b1": 2}


def test_unused_quota_stays_inside_its_department() -> None:
    tree = build_tree(
        [
            project("x", 8, order=0),
            project("p", 4, order=1, parent="x"),
            project("q", 4, order=2, parent="x"),
            project("y", 8, order=3),
        ],
        (),
    )
    caps = {"x": 11.0, "p": 10.0, "q": 1.0, "y": 10.0}
    shares = divide_tree(tree, [caps[n.name] for n in tree.nodes], 16)
    assert dict(zip([n.name for n in tree.nodes], shares, strict=True)) == {
        "x": 8,
        "p": 7,
        "q": 1,
        "y": 8,
    }
