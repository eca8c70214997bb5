"""End to end: a real Prometheus server scrapes a real Corral server's ``/metrics``.

A node registers through the API (no agent process: the test pushes one known
sample itself, with the node's token), and a private Prometheus (the Debian
``prometheus`` binary; ``scripts/test-services.sh`` installs it) scrapes
``127.0.0.1:<port>/metrics`` every second. The test then asks Prometheus' own HTTP API
for the GPU's utilization and the node's ``corral_node_up``: the exposition is only
right if a real Prometheus parses it into the series a dashboard queries. Last, every
query and variable of the Grafana dashboard (deploy/grafana/corral-gpus.json) runs on
that Prometheus and must find data.

Prometheus listens on 127.0.0.1 on a free port, keeps its TSDB in the test's temp
dir, and is stopped by PID (SIGTERM, then SIGKILL) whatever happens. When the
binary is missing the test is skipped, loudly; set ``CORRAL_REQUIRE_PROMETHEUS=1``
to make that a failure instead (for CI machines known to have it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.core.telemetry import (
    GpuProcess,
    GpuSample,
    HostSample,
    MetricsBatch,
    NodeSample,
    XidEvent,
)
from support.cluster import LocalCluster, free_port, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "corral-gpus.json"
REQUIRE_ENV = "CORRAL_REQUIRE_PROMETHEUS"
NODE = "corral-prom-n1"
JOB = "corral-prom-train"
GiB = 1024**3
UTIL = 73.0


@dataclass
class Prometheus:
    url: str
    log_path: Path
    proc: subprocess.Popen[bytes]

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-5000:]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector ``promql`` evaluates to now ([] when it has no series)."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=2)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def label_values(self, label: str, match: str) -> list[str]:
        r = httpx.get(
            f"{self.url}/api/v1/label/{label}/values", params={"match[]": match}, timeout=2
        )
        assert r.status_code == 200, f"label_values({match}, {label}): {r.text}"
        values: list[str] = r.json()["data"]
        return values

    def targets(self) -> str:
        try:
            r = httpx.get(f"{self.url}/api/v1/targets", timeout=2)
            return json.dumps(r.json(), indent=1)[-3000:]
        except (httpx.HTTPError, ValueError) as exc:
            return f"(could not read /api/v1/targets: {exc!r})"


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        reason = (
            "Prometheus is NOT installed: no `prometheus` on PATH, so /metrics is UNTESTED "
            "against a real Prometheus. Fix: install the Debian package `prometheus` "
            "(run scripts/test-services.sh as root, or apt-get install prometheus)."
        )
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
        pytest.skip(reason)
    return path


@pytest.fixture
def prometheus_bin() -> str:
    return prometheus_binary()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    # No agent heartbeats here: keep the registered node "ready" for the whole test.
    c = LocalCluster(
        tmp_path / "corral",
        server_args=("--node-not-ready-after", "10m", "--node-down-after", "20m"),
    )
    try:
        c.start_server()
        yield c
    finally:
        c.stop()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def prometheus(tmp_path: Path, prometheus_bin: str, cluster: LocalCluster) -> Iterator[Prometheus]:
    """A private Prometheus scraping ``cluster`` (``prometheus_bin`` comes first: a
    missing binary skips the test before a Corral server is started for nothing)."""
    root = tmp_path / "prometheus"
    root.mkdir()
    config = root / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: corral\n"
        "    metrics_path: /metrics\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{cluster.port}']\n"
    )
    port = free_port()
    log_path = root / "prometheus.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                prometheus_bin,
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={root / 'data'}",
                "--log.level=info",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=root,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", log_path, proc)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited {proc.returncode}:\n{prom.log()}")
            try:
                return httpx.get(f"{prom.url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 20, "Prometheus to be ready")
        yield prom
    finally:
        stop(proc)


def register_node(cluster: LocalCluster) -> str:
    body = {
        "name": NODE,
        "hostname": NODE,
        "cpu_cores": 8,
        "memory_bytes": 64 * GiB,
        "gpus": [
            {
                "index": i,
                "uuid": f"GPU-{NODE}-{i}",
                "model": "NVIDIA A100-SXM4-80GB",
                "memory_bytes": 80 * GiB,
                "simulated": True,
            }
            for i in range(2)
        ],
        "simulated": True,
        "gpu_backend": "simulated",
    }
    r = httpx.post(
        f"{cluster.url}/api/v1/agent/register",
        json=body,
        headers={"Authorization": f"Bearer {cluster.join_token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    token: str = r.json()["node_token"]
    return token


def push_sample(cluster: LocalCluster, node_token: str) -> None:
    """GPU 0 at UTIL percent; GPU 1 used by a process Corral did not start, with an XID."""
    now = datetime.now(UTC)
    stranger = GpuProcess(pid=4242, used_memory_bytes=GiB, owner="user", user="bob")
    gpus = [
        GpuSample(
            index=i,
            uuid=f"GPU-{NODE}-{i}",
            utilization_percent=util,
            memory_used_bytes=20 * GiB,
            memory_total_bytes=80 * GiB,
            temperature_celsius=51.0,
            power_watts=210.0,
            power_limit_watts=400.0,
            sm_clock_mhz=1410,
            processes=[stranger] if i == 1 else [],
        )
        for i, util in enumerate([UTIL, 5.0])
    ]
    batch = MetricsBatch(
        samples=[NodeSample(at=now, gpus=gpus, host=HostSample(cpu_percent=12.5))],
        xid_events=[XidEvent(at=now, gpu_index=1, uuid=f"GPU-{NODE}-1", xid=79)],
    )
    r = httpx.post(
        f"{cluster.url}/api/v1/agent/metrics",
        json=batch.model_dump(mode="json"),
        headers={"Authorization": f"Bearer {node_token}"},
        timeout=10,
    )
    assert r.status_code == 204, r.text


def grafana_to_promql(text: str) -> str:
    """A dashboard query as Grafana sends it with every variable at "All" (``.*``)."""
    text = text.replace("$__range", "1h")
    return re.sub(r"\$\{?(hostname|gpu|project)\}?", ".*", text)


def wait_for_value(
    prom: Prometheus, promql: str, want: float, timeout: float = 30
) -> dict[str, Any]:
    """Poll Prometheus until ``promql`` has exactly one series whose value is ``want``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if prom.proc.poll() is not None:
            break
        try:
            result = prom.query(promql)
            last = result
            if len(result) == 1 and float(result[0]["value"][1]) == want:
                return result[0]
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.25)
    raise AssertionError(
        f"Prometheus never answered {promql} = {want} within {timeout}s (last: {last!r}; "
        f"prometheus exit code: {prom.proc.poll()})\n"
        f"--- /api/v1/targets:\n{prom.targets()}\n--- prometheus log:\n{prom.log()}"
    )


def test_prometheus_scrapes_dcgm_names_and_corral_series(
    prometheus: Prometheus, cluster: LocalCluster
) -> None:
    node_token = register_node(cluster)
    push_sample(cluster, node_token)
    # A Corral job holding a GPU: its name is the series' `job` label, which Prometheus
    # renames `exported_job` (its own `job` is the scrape job's name).
    r = httpx.post(
        f"{cluster.url}/api/v1/jobs",
        json={"name": JOB, "command": ["true"], "gpus": 1},
        headers={"Authorization": f"Bearer {cluster.admin_token}"},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    [held] = cluster.wait_job(JOB, {"bound"}, timeout=10)["gpu_ids"]
    assert held == 0  # GPU 1 is used outside Corral
    # What Prometheus will scrape (a failure here is Corral's, not Prometheus').
    text = httpx.get(f"{cluster.url}/metrics", timeout=10).text
    assert f'gpu="0",UUID="GPU-{NODE}-0"' in text, text

    util = wait_for_value(prometheus, f'DCGM_FI_DEV_GPU_UTIL{{hostname="{NODE}",gpu="0"}}', UTIL)
    labels = util["metric"]
    assert labels["UUID"] == f"GPU-{NODE}-0"
    assert labels["modelName"] == "NVIDIA A100-SXM4-80GB"
    assert labels["device"] == "nvidia0"
    assert labels["simulated"] == "true"
    assert labels["job"] == "corral"  # the scrape job
    assert labels["exported_job"] == JOB
    assert (labels["project"], labels["user"]) == ("default", "admin")
    assert labels["instance"] == f"127.0.0.1:{cluster.port}"

    up = wait_for_value(prometheus, f'corral_node_up{{hostname="{NODE}"}}', 1.0)
    assert up["metric"]["state"] == "ready" and up["metric"]["pool"] == "default"

    # The dashboard's framebuffer ratio works on the scraped series (20 of 80 GiB).
    fb = wait_for_value(
        prometheus,
        f'DCGM_FI_DEV_FB_USED{{hostname="{NODE}",gpu="0"}} / '
        f'(DCGM_FI_DEV_FB_USED{{hostname="{NODE}",gpu="0"}} '
        f'+ DCGM_FI_DEV_FB_FREE{{hostname="{NODE}",gpu="0"}})',
        0.25,
    )
    assert fb["metric"]["gpu"] == "0"

    check_dashboard_queries(prometheus)


def test_prometheus_sees_what_a_real_agent_reported(
    prometheus: Prometheus, cluster: LocalCluster
) -> None:
    """The whole path: a job's process on a real agent's simulated GPU declares a load,
    the agent samples and ships it, the server exports it, Prometheus scrapes it."""
    cluster.start_agent("corral-prom-agent", "2xA100-80GB")
    cluster.cli(
        "submit", "loaded", "-g", "1", "-e", "CORRAL_SIM_LOAD=util:61,mem:12GiB",
        "--", "sleep", "60",
    )  # fmt: skip
    [gpu] = cluster.wait_job("loaded", {"running"}, timeout=20)["gpu_ids"]
    util = wait_for_value(
        prometheus, f'DCGM_FI_DEV_GPU_UTIL{{hostname="corral-prom-agent",gpu="{gpu}"}}', 61.0
    )
    assert util["metric"]["exported_job"] == "loaded"
    # 12 GiB declared, plus the few MiB the simulated driver itself holds on a GPU.
    series = f'DCGM_FI_DEV_FB_USED{{hostname="corral-prom-agent",gpu="{gpu}"}}'
    used = wait_for_value(prometheus, f"({series} >= bool 12288) * ({series} < bool 12352)", 1.0)
    assert used["metric"]["user"] == "admin"


def check_dashboard_queries(prom: Prometheus) -> None:
    """Every query of deploy/grafana/corral-gpus.json parses in a real Prometheus and
    finds data in what it scraped (all variables at "All"), and so do the variables."""
    dashboard = json.loads(DASHBOARD.read_text())
    for v in dashboard["templating"]["list"]:
        if v["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", grafana_to_promql(v["definition"]))
        assert m, v["definition"]
        values = prom.label_values(m.group(2), m.group(1))
        assert values, f"variable {v['name']}: {v['definition']} has no values"
        if v["name"] == "hostname":
            assert NODE in values
    panels = [
        p
        for top in dashboard["panels"]
        for p in (top.get("panels", []) if top["type"] == "row" else [top])
    ]
    queries = [
        (f"{p['title']} {t['refId']}", grafana_to_promql(t["expr"]))
        for p in panels
        for t in p["targets"]
    ]
    results: dict[str, list[dict[str, Any]]] = {}
    empty: list[str] = []
    # A subquery (the XID table's ``[1h:]``) sees a sample only from its first aligned
    # step after the scrape: allow a few more scrapes before calling a query empty.
    deadline = time.monotonic() + 5
    while True:
        empty = []
        for name, expr in queries:
            if results.get(name):
                continue
            r = httpx.get(f"{prom.url}/api/v1/query", params={"query": expr}, timeout=5)
            assert r.status_code == 200, f"{name}: {expr}\n{r.text}"
            results[name] = r.json()["data"]["result"]
            if not results[name]:
                empty.append(f"{name}: {expr}")
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    per_gpu = {
        (s["metric"]["hostname"], s["metric"]["gpu"]): float(s["value"][1])
        for s in results["GPU utilization A"]
    }
    assert per_gpu[(NODE, "0")] == UTIL, per_gpu
    assert not empty, "dashboard queries that found no data:\n" + "\n".join(empty)
