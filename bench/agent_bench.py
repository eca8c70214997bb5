"""Agent overhead: the CPU time and peak memory of one ``corral agent`` that samples every
second, next to ``prometheus-node-exporter`` scraped every second on the same machine.

**What runs.** A real ``corral server`` and ONE real ``corral agent --simulate-gpus
8xA100-80GB`` with the default ``--metrics-interval 1s`` (started by `LocalCluster`
from ``tests/support/cluster.py``, as the end-to-end tests start them), and on the same
host:

- ``--jobs`` (4) Corral jobs, each one GPU running ``sleep`` with a declared load
  (``CORRAL_SIM_LOAD``), submitted through the HTTP API: the agent supervises them,
  attributes their GPU use to the job and reports their per-job CPU and memory;
- ``--processes`` (200) extra processes (``sleep``), of which ``--gpu-processes`` (16,
  two per GPU) use the simulated GPUs as processes started by hand would
  (``CUDA_VISIBLE_DEVICES=i CORRAL_SIM_NODE=<node> CORRAL_SIM_LOAD=util:…,mem:…``):
  the agent sees them as unmanaged use of a Unix user;
- ``prometheus-node-exporter`` (installed from Debian by this script when missing)
  bound to 127.0.0.1, its ``/metrics`` scraped every second by a thread of this script.
  node_exporter on its own looks at neither GPUs nor processes: it is the reference
  for "a host agent sampling every second", not an equivalent of Corral's agent.

After a warm-up (``--warmup``, 10 s) both are measured over the same fixed window
(``--window``, 60 s): the CPU time (user + system, from ``/proc/<pid>/stat``; the
children, i.e. the jobs, are not counted) and the peak RSS (sampled every 0.5 s; the
kernel's ``VmHWM`` since the start is reported too). The agent's share of one core is
its CPU seconds / window seconds. Then the server must show a fresh sample of the node
(``/api/v1/metrics/now``), the jobs' and the hand-started processes' GPU use
attributed, per-job usage, and about one stored sample per second of the window
(``/api/v1/metrics/gpus``, raw history of GPU 0): otherwise the figures would measure an
agent that did not do its work, and the run fails.

Targets: the agent at most 1 % of one core and at most 100 MiB RSS; the ratios to
node_exporter are recorded (no target). Run: ``.venv/bin/python -m bench agent`` or
``.venv/bin/python -m bench.agent_bench`` (``--help`` for options). Every process it
starts is stopped by PID at the end, on Ctrl-C and on errors. The median of the runs is
written to ``bench/results/agent.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from bench import machine  # noqa: E402
from bench.interrupts import clean_interrupts  # noqa: E402
from support.cluster import LocalCluster, free_port, wait_for  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "agent.json"
TARGET_CPU_PERCENT = 1.0  # of one core
TARGET_RSS_MIB = 100.0
NODE = "bench-1"
GPUS = 8
PROFILE = f"{GPUS}xA100-80GB"
RSS_EVERY_S = 0.5
SCRAPE_EVERY_S = 1.0
NODE_EXPORTER_PACKAGE = "prometheus-node-exporter"
MIB = 1024**2


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- node_exporter


def ensure_node_exporter() -> tuple[str | None, str | None]:
    """The node_exporter binary, installed from Debian when missing: (path, None), or
    (None, why it could not be had)."""
    for name in ("prometheus-node-exporter", "node_exporter"):
        found = shutil.which(name)
        if found:
            return found, None
    if os.geteuid() != 0:
        return None, f"not installed, and installing {NODE_EXPORTER_PACKAGE} needs root"
    if shutil.which("apt-get") is None:
        return None, f"not installed, and there is no apt-get to install {NODE_EXPORTER_PACKAGE}"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    steps = (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", NODE_EXPORTER_PACKAGE],
    )
    _say(f"installing {NODE_EXPORTER_PACKAGE} from Debian (apt-get update; apt-get install)")
    for step in steps:
        try:
            r = subprocess.run(
                step, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"`{' '.join(step)}` failed: {exc}"
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            return None, f"`{' '.join(step)}` exited {r.returncode}: {' / '.join(tail)}"
    found = shutil.which("prometheus-node-exporter")
    if found is None:
        return None, f"{NODE_EXPORTER_PACKAGE} installed but its binary is not on PATH"
    return found, None


def _version(binary: str) -> str | None:
    """node_exporter's first ``--version`` line, e.g. ``node_exporter, version 1.5.0 (…)``."""
    try:
        r = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (r.stdout + r.stderr).strip().splitlines()
    return lines[0] if lines else None


class Scraper:
    """Fetches ``url`` every ``every`` seconds on a thread, as Prometheus would."""

    def __init__(self, url: str, every: float = SCRAPE_EVERY_S) -> None:
        self.url = url
        self.every = every
        self.ok = 0
        self.failed = 0
        self.bytes = 0
        self.seconds: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-scraper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def reset(self) -> None:
        self.ok = self.failed = self.bytes = 0
        self.seconds = []

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            next_at = time.monotonic()
            while not self._stop.is_set():
                began = time.perf_counter()
                try:
                    r = client.get(self.url)
                    r.raise_for_status()
                    self.ok += 1
                    self.bytes += len(r.content)
                    self.seconds.append(time.perf_counter() - began)
                except httpx.HTTPError:
                    self.failed += 1
                next_at += self.every
                self._stop.wait(max(0.0, next_at - time.monotonic()))


# ---------------------------------------------------------------- measuring


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process itself (its children not counted)."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def _vmhwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MIB
    except (OSError, ValueError, IndexError):
        pass
    return None


class Meter:
    """CPU time and peak RSS of some processes over one window, RSS sampled on a thread."""

    def __init__(self, pids: Mapping[str, int], rss_every: float = RSS_EVERY_S) -> None:
        self.pids = dict(pids)
        self.rss_every = rss_every
        self._peak: dict[str, int] = dict.fromkeys(self.pids, 0)
        self._rss_samples = 0
        self._cpu0: dict[str, float] = {}
        self._t0 = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_rss, name="bench-rss", daemon=True)

    def start(self) -> None:
        self._cpu0 = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}
        self._t0 = time.monotonic()
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        cpu1 = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}
        seconds = time.monotonic() - self._t0
        self._stop.set()
        self._thread.join(5)
        out: dict[str, Any] = {"window_s": round(seconds, 2), "rss_samples": self._rss_samples}
        for name, pid in self.pids.items():
            cpu = cpu1[name] - self._cpu0[name]
            out[name] = {
                "pid": pid,
                "cpu_seconds": round(cpu, 3),
                "cpu_percent_of_one_core": round(100 * cpu / seconds, 3),
                "peak_rss_mib": round(self._peak[name] / MIB, 1),
                "vmhwm_mib": _round(_vmhwm_mib(pid), 1),
                "threads": psutil.Process(pid).num_threads(),
            }
        return out

    def _sample_rss(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                try:
                    rss = psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    continue
                self._peak[name] = max(self._peak[name], rss)
            self._rss_samples += 1
            next_at += self.rss_every
            self._stop.wait(max(0.0, next_at - time.monotonic()))


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _host_processes() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


# ---------------------------------------------------------------- one run


def _plain_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}


def _spawn_sleeper(seconds: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A finite sleep: should this script itself be SIGKILLed, they do not live forever.
    return subprocess.Popen(
        ["sleep", str(seconds)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop_process(p: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for p in processes:
        if p.poll() is None:
            p.kill()
    for p in processes:
        p.wait(5)


def _attempt(what: str, step: Callable[[], object]) -> None:
    try:
        step()
    except Exception as exc:
        _say(f"  could not {what}: {type(exc).__name__}: {exc}")


def _checks(
    cluster: LocalCluster,
    *,
    window_start: float,
    window_end: float,
    jobs: list[dict[str, Any]],
    gpu_processes: int,
) -> dict[str, Any]:
    """What the server got from the agent: a fresh sample, attribution, per-job usage and
    the samples stored during the window."""
    now = cluster.api("/metrics/now")
    node = next(n for n in now["nodes"] if n["name"] == NODE)
    sampled_at = datetime.fromisoformat(node["sampled_at"]).timestamp()
    sample_age = time.time() - sampled_at
    owners: dict[str, int] = {}
    job_ids: set[int] = set()
    for gpu in node["gpus"]:
        for proc in (gpu["sample"] or {}).get("processes", []):
            owners[proc["owner"]] = owners.get(proc["owner"], 0) + 1
            if proc["owner"] == "job":
                job_ids.add(proc["job_id"])
    unmanaged = sum(1 for g in node["gpus"] if g["unmanaged"])
    usage = (node["host"] or {}).get("jobs", [])
    first, last = math.ceil(window_start), math.floor(window_end)
    raw = cluster.api(
        "/metrics/gpus",
        node=NODE,
        gpu=0,
        metric="utilization_percent",
        resolution="raw",
        start=datetime.fromtimestamp(first, UTC).isoformat(),
        end=datetime.fromtimestamp(last, UTC).isoformat(),
    )
    points = [p for s in raw["series"] for p in s["points"] if first <= p[0] <= last]
    expected = last - first + 1
    wanted_jobs = {j["id"] for j in jobs}
    result = {
        "sample_age_s": round(sample_age, 2),
        "samples_received": len(points),
        "samples_expected": expected,
        "gpu_processes_by_owner": owners,
        "jobs_attributed": len(job_ids & wanted_jobs),
        "gpus_with_unmanaged_use": unmanaged,
        "jobs_with_host_usage": sum(1 for u in usage if u["job_id"] in wanted_jobs),
    }
    result["ok"] = bool(
        sample_age <= 5.0
        and len(points) >= 0.9 * expected
        and result["jobs_attributed"] == len(jobs)
        and owners.get("user", 0) >= gpu_processes
        and result["jobs_with_host_usage"] == len(jobs)
    )
    return result


def run_once(
    *,
    window: float,
    warmup: float,
    processes: int,
    gpu_processes: int,
    jobs: int,
    exporter: str | None,
    keep: bool,
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="corral-agent-bench-"))
    cluster = LocalCluster(root)
    sleepers: list[subprocess.Popen[bytes]] = []
    node_exporter: subprocess.Popen[bytes] | None = None
    scraper: Scraper | None = None
    lifetime = int(warmup + window + 600)
    try:
        cluster.start_server()
        cluster.start_agent(NODE, PROFILE)
        assert cluster.server is not None
        agent = cluster.agents[NODE]

        # Corral jobs first: a GPU used outside Corral is handed to no job.
        with httpx.Client(
            base_url=f"{cluster.url}/api/v1",
            headers={"Authorization": f"Bearer {cluster.admin_token}"},
            timeout=30,
        ) as client:
            for i in range(jobs):
                r = client.post(
                    "/jobs",
                    json={
                        "name": f"agent-bench-{i}",
                        "gpus": 1,
                        "command": ["sleep", str(lifetime)],
                        "env": {"CORRAL_SIM_LOAD": f"util:{60 + 10 * (i % 4)},mem:{10 + i}GiB"},
                    },
                )
                if r.status_code != 201:
                    raise RuntimeError(f"submit: HTTP {r.status_code}: {r.text}")
        running = [
            cluster.wait_job(f"agent-bench-{i}", {"running"}, timeout=60) for i in range(jobs)
        ]

        # Processes started by hand: some on the simulated GPUs, the rest plain.
        for i in range(processes):
            env = _plain_env()
            if i < gpu_processes:
                gpu, k = i % GPUS, i // GPUS
                env |= {
                    "CUDA_VISIBLE_DEVICES": str(gpu),
                    "CORRAL_SIM_NODE": NODE,
                    "CORRAL_SIM_LOAD": f"util:{10 + 5 * k},mem:{2 + k}GiB",
                }
            sleepers.append(_spawn_sleeper(lifetime, env))

        pids = {"agent": agent.pid}
        exporter_note: str | None = None
        if exporter is not None:
            port = free_port()
            log = (root / "node-exporter.log").open("ab")
            node_exporter = subprocess.Popen(
                [exporter, f"--web.listen-address=127.0.0.1:{port}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            url = f"http://127.0.0.1:{port}/metrics"

            def answers() -> bool:
                assert node_exporter is not None
                if node_exporter.poll() is not None:
                    raise RuntimeError(f"node_exporter exited:\n{cluster.log('node-exporter.log')}")
                try:
                    return httpx.get(url, timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            try:
                wait_for(answers, 20, "node_exporter to answer /metrics", interval=0.2)
            except (AssertionError, RuntimeError) as exc:
                exporter_note = f"node_exporter did not start: {exc}"
                _stop_process(node_exporter)
                node_exporter = None
            else:
                scraper = Scraper(url)
                scraper.start()
                pids["node_exporter"] = node_exporter.pid
        pids["server"] = cluster.server.pid

        # Warm-up: every GPU process and job seen by the server before measuring.
        wait_for(
            lambda: _gpu_process_count(cluster) >= gpu_processes + jobs,
            max(warmup, 30),
            "the server to see every process on the simulated GPUs",
            interval=0.5,
        )
        time.sleep(warmup)

        host_processes = _host_processes()
        meter = Meter(pids)
        if scraper is not None:
            scraper.reset()
        window_start = time.time()
        meter.start()
        time.sleep(window)
        measured = meter.stop()
        window_end = time.time()
        scrapes = (
            {
                "ok": scraper.ok,
                "failed": scraper.failed,
                "mean_bytes": round(scraper.bytes / scraper.ok) if scraper.ok else None,
                "median_ms": round(1000 * statistics.median(scraper.seconds), 1)
                if scraper.seconds
                else None,
            }
            if scraper is not None
            else None
        )
        if scraper is not None:
            scraper.stop()

        time.sleep(5)  # the agent ships every 2 s: let the window's last samples arrive
        checks = _checks(
            cluster,
            window_start=window_start,
            window_end=window_end,
            jobs=running,
            gpu_processes=gpu_processes,
        )
        agent_figures = measured["agent"]
        agent_figures["samples_received"] = checks["samples_received"]
        result: dict[str, Any] = {
            "window_s": measured["window_s"],
            "host_processes": host_processes,
            "agent": agent_figures,
            "node_exporter": (
                measured["node_exporter"] | {"scrapes": scrapes}
                if "node_exporter" in measured
                else None
            ),
            "node_exporter_note": exporter_note,
            "server": {
                "cpu_seconds": measured["server"]["cpu_seconds"],
                "cpu_percent_of_one_core": measured["server"]["cpu_percent_of_one_core"],
            },
            "checks": checks,
        }
        return result
    finally:
        # Each step on its own: one that fails must not leave the others' processes.
        if scraper is not None:
            _attempt("stop the scraper", scraper.stop)
        if node_exporter is not None:
            _attempt("stop node_exporter", lambda: _stop_process(node_exporter))
        _attempt("stop the extra processes", lambda: _stop_all(sleepers))
        _attempt("stop the cluster", cluster.stop)
        if keep:
            _say(f"  kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _gpu_process_count(cluster: LocalCluster) -> int:
    now = cluster.api("/metrics/now")
    return sum(
        len((g["sample"] or {}).get("processes", []))
        for n in now["nodes"]
        if n["name"] == NODE
        for g in n["gpus"]
    )


# ---------------------------------------------------------------- reporting


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def _median_figures(runs: list[dict[str, Any]], who: str, fields: tuple[str, ...]) -> Any:
    present = [r[who] for r in runs if r.get(who)]
    if not present:
        return None
    return {f: _median([p.get(f) for p in present]) for f in fields}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.agent_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=1, help="runs (the median is reported)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument("--processes", type=int, default=200, help="extra processes on the host")
    parser.add_argument(
        "--gpu-processes", type=int, default=16, help="of those, on the simulated GPUs"
    )
    parser.add_argument("--jobs", type=int, default=4, help="one-GPU Corral jobs running")
    parser.add_argument("--no-node-exporter", action="store_true", help="measure the agent alone")
    parser.add_argument("--keep", action="store_true", help="keep each run's directory")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.gpu_processes > args.processes:
        parser.error("--gpu-processes cannot exceed --processes")
    if args.jobs > GPUS:
        parser.error(f"--jobs: at most {GPUS} (one GPU each)")

    runs: list[dict[str, Any]] = []
    try:
        with clean_interrupts():
            exporter: str | None = None
            unavailable: str | None = "not wanted (--no-node-exporter)"
            if not args.no_node_exporter:
                exporter, unavailable = ensure_node_exporter()
            if exporter is None:
                _say(f"!!! node_exporter unavailable: {unavailable}; measuring the agent alone")
            _say(
                f"agent: one agent with {PROFILE} (simulated), {args.jobs} jobs, "
                f"{args.processes} extra processes ({args.gpu_processes} on the GPUs); "
                f"warm-up {args.warmup:g} s, window {args.window:g} s, {args.runs} run(s)"
            )
            for n in range(args.runs):
                result = run_once(
                    window=args.window,
                    warmup=args.warmup,
                    processes=args.processes,
                    gpu_processes=args.gpu_processes,
                    jobs=args.jobs,
                    exporter=exporter,
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

    fields = ("cpu_seconds", "cpu_percent_of_one_core", "peak_rss_mib", "vmhwm_mib")
    agent = _median_figures(runs, "agent", (*fields, "samples_received"))
    exporter_figures = _median_figures(runs, "node_exporter", fields)
    notes = [r["node_exporter_note"] for r in runs if r.get("node_exporter_note")]
    if exporter_figures is None:
        unavailable = notes[0] if notes else unavailable
        exporter_figures = {"available": False, "note": f"node_exporter unavailable: {unavailable}"}
        ratios = None
    else:
        exporter_figures = {
            "available": True,
            "version": _version(exporter) if exporter else None,
            "listen": "127.0.0.1 (a free port)",
            "scraped_every_s": SCRAPE_EVERY_S,
        } | exporter_figures
        ratios = {
            "cpu": _ratio(agent["cpu_seconds"], exporter_figures["cpu_seconds"]),
            "peak_rss": _ratio(agent["peak_rss_mib"], exporter_figures["peak_rss_mib"]),
        }
    cpu, rss = agent["cpu_percent_of_one_core"], agent["peak_rss_mib"]
    met = bool(cpu <= TARGET_CPU_PERCENT and rss <= TARGET_RSS_MIB)
    checks_ok = all(r["checks"]["ok"] for r in runs)
    summary: dict[str, Any] = {
        "benchmark": "agent",
        "description": (
            f"one corral agent with {GPUS} simulated A100 GPUs sampling every second "
            f"(GPUs, their processes attributed, host, per-job usage) and shipping to a "
            f"corral server on the same machine, with {args.jobs} one-GPU Corral jobs "
            f"running and {args.processes} extra processes on the host "
            f"({args.gpu_processes} of them on the simulated GPUs, started by hand); side "
            "by side, prometheus-node-exporter (Debian, default collectors) scraped every "
            "second over the same window. node_exporter looks at neither GPUs nor "
            "processes: a reference for a per-second host agent, not an equivalent. "
            "CPU = user + system of the process itself (children excluded); peak RSS "
            f"sampled every {RSS_EVERY_S:g} s. Simulated GPUs: the cost of NVML calls on "
            "real GPUs is not in these figures"
        ),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "runs": args.runs,
        "window": {"seconds": args.window, "warmup_seconds": args.warmup},
        "setup": {
            "gpus": PROFILE,
            "metrics_interval_s": 1.0,
            "jobs": args.jobs,
            "extra_processes": args.processes,
            "gpu_processes": args.gpu_processes,
            "host_processes": _median([r["host_processes"] for r in runs]),
        },
        "agent": agent,
        "node_exporter": exporter_figures,
        "ratios": ratios,
        "server": _median_figures(runs, "server", ("cpu_seconds", "cpu_percent_of_one_core")),
        "target": {
            "cpu_percent_at_most": TARGET_CPU_PERCENT,
            "rss_mib_at_most": TARGET_RSS_MIB,
            "met": met,
        },
        "checks_ok": checks_ok,
        "passed": bool(met and checks_ok),
        "each_run": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")

    _say(f"median of {args.runs} run(s), {args.window:g} s window:")
    _say(
        f"  agent:         {cpu:.2f} % of one core ({agent['cpu_seconds']:.2f} s CPU), "
        f"peak RSS {rss:.1f} MiB (VmHWM {agent['vmhwm_mib']} MiB), "
        f"{agent['samples_received']:.0f} samples stored "
        f"[target ≤ {TARGET_CPU_PERCENT:g} % and ≤ {TARGET_RSS_MIB:g} MiB: "
        f"{'met' if met else 'MISSED'}]"
    )
    if ratios is not None:
        _say(
            f"  node_exporter: {exporter_figures['cpu_percent_of_one_core']:.2f} % of one "
            f"core ({exporter_figures['cpu_seconds']:.2f} s CPU), peak RSS "
            f"{exporter_figures['peak_rss_mib']:.1f} MiB, scraped every {SCRAPE_EVERY_S:g} s"
        )
        _say(f"  agent / node_exporter: CPU x{ratios['cpu']}, RSS x{ratios['peak_rss']}")
    else:
        _say(f"  !!! {exporter_figures['note']}")
    if not checks_ok:
        _say("FAIL: the agent did not do all its work (see each_run.checks)")
    _say(f"wrote {args.output}")
    return 0 if summary["passed"] else 1


def _one_line(r: dict[str, Any]) -> str:
    a, e, c = r["agent"], r["node_exporter"], r["checks"]
    line = (
        f"agent {a['cpu_percent_of_one_core']:.2f} % CPU, peak RSS {a['peak_rss_mib']} MiB; "
        f"samples {c['samples_received']}/{c['samples_expected']}, "
        f"GPU processes {c['gpu_processes_by_owner']}, checks {'ok' if c['ok'] else 'FAILED'}"
    )
    if e:
        line += (
            f"; node_exporter {e['cpu_percent_of_one_core']:.2f} % CPU, "
            f"peak RSS {e['peak_rss_mib']} MiB, scrapes {e['scrapes']}"
        )
    return line


if __name__ == "__main__":
    sys.exit(main())
