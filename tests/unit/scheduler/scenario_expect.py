"""Checking a scenario file's ``expect:`` block against simulation results.

The block (documented in docs/scheduler.md) has two optional parts, ``first_cycle``
(after cycle 1) and ``final`` (after all cycles). Each may give:

* ``allocated`` / ``fair_share``: project → GPUs;
* ``jobs``: job → ``running`` | ``pending``, or a mapping with ``state`` and any of
  ``node``, ``gpu_ids`` (exact) and ``reason`` (a substring of the reason);
* ``bound`` / ``preempted``: how many jobs were bound / preempted (in cycle 1, or in all
  cycles for ``final``);
* ``preempted_jobs``: exactly which jobs were preempted (in any order);
* ``cycles``: (final only) how many cycles the run took until a cycle changed nothing.

Mismatches are collected, not raised one by one, so a failing scenario shows every
difference at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.scheduler.sim import SimResult, gpu_number

PART_KEYS = {
    "allocated",
    "fair_share",
    "jobs",
    "bound",
    "preempted",
    "preempted_jobs",
    "cycles",
}
JOB_KEYS = {"state", "node", "gpu_ids", "reason"}


def check(part: str, expected: Mapping[str, Any], result: SimResult) -> list[str]:
    """Differences between ``expected`` (one part of ``expect:``) and ``result``."""
    problems: list[str] = []
    unknown = set(expected) - PART_KEYS
    if unknown:
        problems.append(f"{part}: unknown keys {sorted(unknown)} (known: {sorted(PART_KEYS)})")
    output = result.to_json()
    for key in ("allocated", "fair_share"):
        for project, want in (expected.get(key) or {}).items():
            have = output["projects"].get(project, {}).get(key)
            if have is None or abs(float(have) - float(want)) > 1e-6:
                problems.append(f"{part}.{key}.{project}: expected {want}, got {have}")
    for job, want in (expected.get("jobs") or {}).items():
        problems.extend(_check_job(f"{part}.jobs.{job}", want, output["jobs"].get(job)))
    preemptions = [e for e in output["events"] if e["action"] == "preempted"]
    bindings = [e for e in output["events"] if e["action"] == "bound"]
    if "bound" in expected and len(bindings) != expected["bound"]:
        problems.append(f"{part}.bound: expected {expected['bound']}, got {len(bindings)}")
    if "preempted" in expected and len(preemptions) != expected["preempted"]:
        got = [f"{e['job']} (by {e['by']})" for e in preemptions]
        problems.append(f"{part}.preempted: expected {expected['preempted']}, got {got}")
    if "preempted_jobs" in expected:
        want_set = sorted(expected["preempted_jobs"])
        have_set = sorted(e["job"] for e in preemptions)
        if want_set != have_set:
            problems.append(f"{part}.preempted_jobs: expected {want_set}, got {have_set}")
    if "cycles" in expected and result.cycles_run != expected["cycles"]:
        problems.append(f"{part}.cycles: expected {expected['cycles']}, ran {result.cycles_run}")
    return problems


def _check_job(where: str, want: Any, have: Mapping[str, Any] | None) -> list[str]:
    if have is None:
        return [f"{where}: no such job in the output"]
    if isinstance(want, str):
        want = {"state": want}
    unknown = set(want) - JOB_KEYS
    if unknown:
        return [f"{where}: unknown keys {sorted(unknown)} (known: {sorted(JOB_KEYS)})"]
    problems = []
    for key in ("state", "node", "gpu_ids"):
        if key in want and have.get(key) != want[key]:
            problems.append(f"{where}.{key}: expected {want[key]!r}, got {have.get(key)!r}")
    if "reason" in want and want["reason"] not in (have.get("reason") or ""):
        problems.append(f"{where}.reason: expected to contain {want['reason']!r}, got {have}")
    return problems


def allocated_of(result: SimResult) -> dict[str, int | float]:
    """Project → GPUs allocated, as the JSON output has them (handy in messages)."""
    return {name: gpu_number(share.allocated) for name, share in result.projects.items()}
