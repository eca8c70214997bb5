"""End-to-end throughput: 1,000 one-GPU ``sleep 1`` jobs on 4 simulated 8-GPU nodes.

A real ``corral server`` and 4 real ``corral agent --simulate-gpus 8xA100-80GB``
processes run on this machine (started by `LocalCluster` from the test suite's
``tests/support/cluster.py``). The GPUs are simulated; the jobs are real processes
(``sleep 1``) started, watched and reported by the agents. The benchmark submits the
jobs through the HTTP API as fast as it takes them (one keep-alive ``httpx`` client,
a few submitting threads) and measures:

- ``makespan_s``: from the first submit until the client has seen every job
  ``succeeded``; the target (<= 35 s) applies to its median. The ideal is
  1000 x 1 s / 32 GPUs = 31.25 s; with whole one-second jobs 8 GPUs must run 32 of
  them, so 32 s is the floor any scheduler could reach;
- ``start_rate_per_s``: job starts per second, from the jobs' ``started_at``;
- ``submit_rate_per_s``: accepted submissions per second;
- latency percentiles from submit (``created_at``) to start (``started_at``), and the
  median time each job spends in each step, from its events (submitted → bound →
  starting → running → succeeded);
- ``gpu_idle_gap_s``: how long a GPU sat idle between one job's end and the next one's
  start, the overhead the makespan pays about 31 times over;
- ``cpu_s``: CPU seconds used by the server and by the agents.

Run: ``.venv/bin/python -m bench.throughput_bench`` (``--help`` for options). Every
process started is stopped by PID at the end, on Ctrl-C and on errors too. The median
of the runs is written to ``bench/results/throughput.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from bench import machine  # noqa: E402
from bench.interrupts import clean_interrupts  # noqa: E402
from support.cluster import LocalCluster  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "throughput.json"
TARGET_MAKESPAN_S = 35.0
SLURM_REFERENCE = "Slurm 22.05 on the same 2-core machine: 60-64 s (15-17 starts/s)"
TERMINAL = {"succeeded", "failed", "stopped", "preempted", "lost"}


# ---------------------------------------------------------------- one run


def _parse_time(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of non-empty ``values``."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def _submit_all(client: httpx.Client, names: list[str], threads: int) -> list[float]:
    """Submit one job per name from ``threads`` threads; returns each answer's time."""
    done_at: list[float] = [0.0] * len(names)
    errors: list[BaseException] = []

    def worker(indices: range) -> None:
        try:
            for i in indices:
                r = client.post(
                    "/jobs",
                    json={"name": names[i], "gpus": 1, "command": ["sleep", "1"]},
                )
                if r.status_code != 201:
                    raise RuntimeError(f"submit {names[i]}: HTTP {r.status_code}: {r.text}")
                done_at[i] = time.time()
        except BaseException as exc:
            errors.append(exc)

    workers = [
        threading.Thread(target=worker, args=(range(t, len(names), threads),), daemon=True)
        for t in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return done_at


def _wait_all_done(client: httpx.Client, names: list[str], timeout: float) -> float:
    """Wait until every job is terminal; the time the client saw the last one so."""
    deadline = time.monotonic() + timeout
    # Cheap while the queue drains: jobs start in submission order, so watch the last.
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/default/{names[-1]}").raise_for_status().json()
        if job["state"] in TERMINAL or job["state"] == "running":
            break
        time.sleep(0.25)
    # Then the few that are left, one at a time, closely.
    jobs = client.get("/jobs", params={"project": "default"}).raise_for_status().json()["jobs"]
    left = [j["name"] for j in jobs if j["state"] not in TERMINAL and j["name"] in set(names)]
    seen_at = time.time()
    for name in left:
        while True:
            job = client.get(f"/jobs/default/{name}").raise_for_status().json()
            if job["state"] in TERMINAL:
                seen_at = time.time()
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {name} still {job['state']} after {timeout:.0f} s")
            time.sleep(0.02)
    return seen_at


def _idle_gaps(jobs: list[dict[str, Any]]) -> dict[str, float] | None:
    """How long each GPU sat idle between one job's end and the next one's start
    (``finished_at`` to ``started_at`` on the same node and GPU): the per-job cost of
    scheduling, start-up and reporting that the makespan pays ~31 times over."""
    by_gpu: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for j in jobs:
        start, end = _parse_time(j["started_at"]), _parse_time(j["finished_at"])
        if start is None or end is None or not j["node"]:
            continue
        for gpu in j["gpu_ids"]:
            by_gpu.setdefault((j["node"], gpu), []).append((start, end))
    gaps = []
    for spans in by_gpu.values():
        spans.sort()
        gaps += [b[0] - a[1] for a, b in itertools.pairwise(spans)]
    if not gaps:
        return None
    return {
        "p50": round(_percentile(gaps, 50), 4),
        "p90": round(_percentile(gaps, 90), 4),
        "mean": round(statistics.fmean(gaps), 4),
    }


def _phases(client: httpx.Client, names: list[str]) -> dict[str, float]:
    """Median seconds between consecutive lifecycle events, over every job."""
    steps: dict[str, list[float]] = {}
    order = ["submitted", "bound", "starting", "running", "succeeded"]
    for name in names:
        job = client.get(f"/jobs/default/{name}").raise_for_status().json()
        at = {e["type"]: _parse_time(e["at"]) for e in job["events"]}
        for a, b in itertools.pairwise(order):
            if at.get(a) is not None and at.get(b) is not None:
                steps.setdefault(f"{a}_to_{b}_s", []).append(at[b] - at[a])  # type: ignore[operator]
    return {k: round(statistics.median(v), 4) for k, v in steps.items()}


def _cpu_seconds(cluster: LocalCluster) -> dict[str, float]:
    """CPU time (user + system) the server and the agents have used so far."""

    def used(pid: int) -> float:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            return 0.0
        return float(t.user + t.system)

    server = used(cluster.server.pid) if cluster.server else 0.0
    agents = sum(used(p.pid) for p in cluster.agents.values())
    return {"server": round(server, 1), "agents": round(agents, 1)}


def run_once(
    *,
    jobs: int,
    agents: int,
    gpus_per_agent: int,
    threads: int,
    timeout: float,
    phases: bool,
    keep: bool,
    server_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="corral-throughput-"))
    cluster = LocalCluster(root, server_args=server_args)
    try:
        cluster.start_server()
        for n in range(agents):
            cluster.start_agent(f"node-{n + 1}", f"{gpus_per_agent}xA100-80GB")
        names = [f"tp-{i:05d}" for i in range(jobs)]
        with httpx.Client(
            base_url=f"{cluster.url}/api/v1",
            headers={"Authorization": f"Bearer {cluster.admin_token}"},
            timeout=60,
            limits=httpx.Limits(max_connections=threads, max_keepalive_connections=threads),
        ) as client:
            t0 = time.time()
            submitted_at = _submit_all(client, names, threads)
            t_submitted = max(submitted_at)
            t_done = _wait_all_done(client, names, timeout)
            listed = client.get("/jobs", params={"project": "default"}).raise_for_status()
            by_name = {j["name"]: j for j in listed.json()["jobs"]}
            got = [by_name[n] for n in names]
            states: dict[str, int] = {}
            for j in got:
                states[j["state"]] = states.get(j["state"], 0) + 1
            created = [_parse_time(j["created_at"]) or 0.0 for j in got]
            started = [_parse_time(j["started_at"]) for j in got]
            finished = [_parse_time(j["finished_at"]) for j in got]
            starts = sorted(s for s in started if s is not None)
            waits = [s - c for s, c in zip(started, created, strict=True) if s is not None]
            ends = [f for f in finished if f is not None]
            cpu = _cpu_seconds(cluster)
            gaps = _idle_gaps(got)
            phase_medians = _phases(client, names) if phases else {}
        span = starts[-1] - starts[0] if len(starts) > 1 else 0.0
        result: dict[str, Any] = {
            "jobs": jobs,
            "states": states,
            "makespan_s": round(t_done - t0, 3),
            "makespan_server_s": round(max(ends) - t0, 3) if ends else None,
            "submit_s": round(t_submitted - t0, 3),
            "submit_rate_per_s": round(jobs / (t_submitted - t0), 1),
            "start_rate_per_s": round((len(starts) - 1) / span, 2) if span else None,
            "first_start_s": round(starts[0] - t0, 3) if starts else None,
            "last_start_s": round(starts[-1] - t0, 3) if starts else None,
            "submit_to_start_s": {
                "p50": round(_percentile(waits, 50), 3),
                "p90": round(_percentile(waits, 90), 3),
                "p99": round(_percentile(waits, 99), 3),
                "max": round(max(waits), 3),
            }
            if waits
            else None,
            "gpu_idle_gap_s": gaps,
            "phase_medians": phase_medians,
            "cpu_s": cpu,
        }
        return result
    finally:
        cluster.stop()
        if keep:
            print(f"  kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- reporting


def _median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=3, help="runs (the median is reported)")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--gpus-per-agent", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4, help="submitting threads")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument("--no-phases", action="store_true", help="skip the per-step medians")
    parser.add_argument("--keep", action="store_true", help="keep each run's directory")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    gpus = args.agents * args.gpus_per_agent
    ideal = args.jobs * 1.0 / gpus
    _say(
        f"throughput: {args.jobs} x 1-GPU `sleep 1` on {args.agents} agents x "
        f"{args.gpus_per_agent} simulated GPUs (ideal {ideal:.2f} s), {args.runs} run(s)"
    )
    runs: list[dict[str, Any]] = []
    try:
        with clean_interrupts():
            for n in range(args.runs):
                result = run_once(
                    jobs=args.jobs,
                    agents=args.agents,
                    gpus_per_agent=args.gpus_per_agent,
                    threads=args.threads,
                    timeout=args.timeout,
                    phases=not args.no_phases,
                    keep=args.keep,
                )
                runs.append(result)
                _say(f"  run {n + 1}: {_one_line(result)}")
    except KeyboardInterrupt:
        _say("interrupted; every process it started was stopped")
        return 130
    except Exception as exc:
        _say(f"error: {type(exc).__name__}: {exc} (every process it started was stopped)")
        return 1

    all_succeeded = all(r["states"] == {"succeeded": args.jobs} for r in runs)
    makespan = _median_of(runs, "makespan_s")
    target_applies = (args.jobs, args.agents, args.gpus_per_agent) == (1000, 4, 8)
    met = bool(all_succeeded and makespan is not None and makespan <= TARGET_MAKESPAN_S)
    passed = met if target_applies else all_succeeded
    summary: dict[str, Any] = {
        "benchmark": "throughput",
        "description": (
            f"{args.jobs} one-GPU `sleep 1` jobs (real processes) on {args.agents} corral "
            f"agents with {args.gpus_per_agent} simulated A100 GPUs each and one corral "
            "server (SQLite), all on this machine; submitted through the HTTP API "
            f"from {args.threads} thread(s) of one keep-alive client"
        ),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "runs": args.runs,
        "median": {
            key: _median_of(runs, key)
            for key in (
                "makespan_s",
                "makespan_server_s",
                "submit_rate_per_s",
                "start_rate_per_s",
                "first_start_s",
            )
        },
        "median_submit_to_start_s": _median_of_dicts(runs, "submit_to_start_s"),
        "median_gpu_idle_gap_s": _median_of_dicts(runs, "gpu_idle_gap_s"),
        "median_cpu_s": _median_of_dicts(runs, "cpu_s"),
        "ideal_makespan_s": round(ideal, 2),
        "target": {
            "makespan_s_at_most": TARGET_MAKESPAN_S,
            "applies": target_applies,
            "met": met if target_applies else None,
        },
        "all_jobs_succeeded": all_succeeded,
        "passed": passed,
        "reference": SLURM_REFERENCE,
        "each_run": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    verdict = ("PASS" if met else "FAIL") if target_applies else "n/a"
    _say(
        f"median of {args.runs}: {makespan} s for all {args.jobs} jobs "
        f"(target <= {TARGET_MAKESPAN_S:g} s: {verdict}), "
        f"{summary['median']['start_rate_per_s']} starts/s, "
        f"submit {summary['median']['submit_rate_per_s']}/s; wrote {args.output}"
    )
    if not all_succeeded:
        _say("FAIL: not every job succeeded (see each_run.states)")
    return 0 if passed else 1


def _one_line(r: dict[str, Any]) -> str:
    latency = r["submit_to_start_s"] or {}
    return (
        f"{r['makespan_s']:.2f} s for all {r['jobs']} (states {r['states']}), "
        f"{r['start_rate_per_s']} starts/s, submit {r['submit_rate_per_s']}/s, "
        f"submit→start p50 {latency.get('p50')} s p99 {latency.get('p99')} s; "
        f"GPU idle gap {r['gpu_idle_gap_s']}; cpu {r['cpu_s']}; steps {r['phase_medians']}"
    )


def _median_of_dicts(runs: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    """Field by field median of the dicts ``run[key]`` (runs without one are left out)."""
    dicts = [r[key] for r in runs if r.get(key)]
    if not dicts:
        return None
    return {f: round(statistics.median(d[f] for d in dicts), 4) for f in dicts[0]}


if __name__ == "__main__":
    sys.exit(main())
