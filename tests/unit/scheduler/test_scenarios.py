"""Every scenario file in tests/scenarios/, run through the simulator.

For each file: the ``expect:`` block after the first cycle and after all cycles; that
the run became stable within the file's cycles; that it is stable (feeding the final
state back for more cycles binds and preempts nothing); and that it is deterministic.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from scenario_expect import allocated_of, check

from corral.scheduler.model import Snapshot
from corral.scheduler.scenario import Scenario, load_scenario
from corral.scheduler.sim import run_simulation

ROOT = Path(__file__).resolve().parents[3]
FILES = sorted((ROOT / "tests" / "scenarios").glob("*.yaml"))
EXTRA_CYCLES = 3


def test_there_are_enough_scenarios() -> None:
    assert len(list((ROOT / "tests" / "scenarios").glob("*.yaml"))) >= 40


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_scenario(path: Path) -> None:
    scenario = load_scenario(path)
    assert path.read_text().startswith("#"), "each scenario starts with a comment header"
    expect = scenario.expect or {}
    assert expect, f"{path.name} has no expect: block"
    problems: list[str] = []

    first = run_simulation(scenario, cycles=1)
    problems += check("first_cycle", expect.get("first_cycle") or {}, first)

    final = run_simulation(scenario)
    problems += check("final", expect.get("final") or {}, final)
    if not final.converged:
        problems.append(f"not stable after {final.cycles_run} cycles")
    assert not problems, "\n".join([*problems, f"allocated: {allocated_of(final)}"])

    # Stability (rule 5): the final state, scheduled again, changes nothing.
    again = run_simulation(_from_final(scenario, final.snapshot), cycles=EXTRA_CYCLES)
    assert again.events == [], f"the final state is not stable: {again.to_json()['events']}"

    # Determinism: the same file gives the same result.
    assert run_simulation(scenario).to_json() == final.to_json()


def _from_final(scenario: Scenario, snapshot: Snapshot) -> Scenario:
    return replace(scenario, snapshot=snapshot)


def test_phase_two_starts_from_phase_one() -> None:
    """The reference scenario's phase 2 runs exactly on phase 1's outcome."""
    phase1 = run_simulation(load_scenario(ROOT / "tests/scenarios/reference-phase1.yaml"))
    phase2 = load_scenario(ROOT / "tests/scenarios/reference-phase2.yaml")
    names2 = phase2.job_names
    running2 = {names2[j.id]: j.placements for j in phase2.snapshot.running}
    running1 = {
        name: outcome.placements
        for name, outcome in phase1.jobs.items()
        if outcome.state == "running"
    }
    assert running2 == running1
    new = {names2[j.id] for j in phase2.snapshot.pending} - set(phase1.jobs)
    assert sorted(new) == sorted(f"d-{i}" for i in range(1, 9))


def test_docs_example_is_the_reference_scenario() -> None:
    for phase in ("1", "2"):
        doc = "" if phase == "1" else "-phase2"
        assert (ROOT / f"docs/examples/reference-scenario{doc}.yaml").read_text() == (
            ROOT / f"tests/scenarios/reference-phase{phase}.yaml"
        ).read_text()
