"""deploy/grafana/corral-gpus.json only queries what the server exports on /metrics.

The exported names and labels come from rendering a cluster with one node and one GPU
with every field filled in (`corral.server.metrics.prometheus.render`), so a renamed or
dropped series breaks this test rather than a dashboard panel that quietly goes empty.
(tests/e2e/test_prometheus_e2e.py runs every panel's query on a real Prometheus.)
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from corral.core.telemetry import (
    ClusterNow,
    GpuNow,
    GpuProcess,
    GpuSample,
    HostSample,
    JobRef,
    MigSample,
    NodeNow,
)
from corral.scheduler import ProjectShare
from corral.server.metrics.prometheus import render

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "corral-gpus.json"
GiB = 1024**3

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Labels Prometheus adds to every scraped series (the scrape job and the target).
TARGET_LABELS = {"job", "instance"}
# Grafana's own variables, usable in any query.
BUILTIN_VARIABLES = {"__range", "__interval", "__rate_interval", "__range_s", "__interval_ms"}
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip
# What the dashboard must show (the panels docs/monitoring.md describes).
REQUIRED = {
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_POWER_MGMT_LIMIT",
    "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_XID_ERRORS",
    "corral_gpu_unmanaged",
    "corral_node_up",
    "corral_project_quota_gpus",
    "corral_project_fair_share_gpus",
    "corral_project_allocated_gpus",
    "corral_project_pending_jobs",
}


# ---------------------------------------------------------------- what /metrics exports


def full_cluster() -> str:
    """/metrics for one ready node with one GPU whose every field is known."""
    at = datetime(2030, 1, 1, tzinfo=UTC)
    sample = GpuSample(
        index=0,
        uuid="GPU-n1-0",
        utilization_percent=73.0,
        memory_utilization_percent=20.0,
        memory_used_bytes=20 * GiB,
        memory_total_bytes=80 * GiB,
        temperature_celsius=51.0,
        power_watts=210.0,
        power_limit_watts=400.0,
        sm_clock_mhz=1410,
        memory_clock_mhz=1593,
        throttle_reasons=["sw_power_cap"],
        ecc_corrected_errors=1,
        ecc_uncorrected_errors=0,
        pcie_tx_bytes_per_s=1e9,
        pcie_rx_bytes_per_s=2e9,
        nvlink_tx_bytes_per_s=3e9,
        nvlink_rx_bytes_per_s=4e9,
        processes=[GpuProcess(pid=10, used_memory_bytes=GiB, owner="job", job_id=1, rank=0)],
        mig=[
            MigSample(
                uuid="MIG-n1-0-1",
                profile="1g.10gb",
                memory_used_bytes=GiB,
                memory_total_bytes=10 * GiB,
            )
        ],
    )
    unset = [f for f in GpuSample.model_fields if f != "error" and getattr(sample, f) is None]
    assert not unset, f"fill in the new GpuSample fields {unset} here"
    now = ClusterNow(
        at=at,
        nodes=[
            NodeNow(
                name="n1",
                state="ready",
                pool="default",
                simulated=True,
                last_heartbeat=at,
                sampled_at=at,
                gpus=[
                    GpuNow(
                        index=0,
                        uuid="GPU-n1-0",
                        model="NVIDIA A100-SXM4-80GB",
                        memory_bytes=80 * GiB,
                        jobs=[JobRef(id=1, name="train", project="team-a", user="alice")],
                        unmanaged="bob (pid 42 python)",
                        sample=sample,
                    )
                ],
                host=HostSample(
                    cpu_percent=12.5, memory_used_bytes=GiB, memory_total_bytes=64 * GiB
                ),
            )
        ],
    )
    shares = {"team-a": ProjectShare(quota=1, fair_share=2, allocated=1, pending=3)}
    return render(now, shares, {("n1", 0): 79})


def exported() -> dict[str, set[str]]:
    """Every series name /metrics exports, with the union of its label names."""
    out: dict[str, set[str]] = {}
    for line in full_cluster().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z_:][A-Za-z0-9_:]*)\{(.*)\} \S+", line)
        assert m, f"not a sample line: {line!r}"
        labels = set(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="(?:[^"\\]|\\.)*"', m.group(2)))
        out.setdefault(m.group(1), set()).update(labels)
    return out


EXPORTED = exported()


# ---------------------------------------------------------------- reading PromQL

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", re.IGNORECASE
)
_NAME = re.compile(r"(?<![\w.$:])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:]|\s*\()")
_VARIABLE = re.compile(r"\$\{?(\w+)")


def metric_names(expr: str) -> set[str]:
    """The series names an expression reads (not functions, keywords, labels, numbers)."""
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = _GROUPING.sub("", s)
    return {n for n in _NAME.findall(s) if n.lower() not in PROMQL_KEYWORDS}


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(series name, label names it matches on) for each ``name{…}`` in ``expr``."""
    return [(name, set(_MATCHER.findall(body))) for name, body in _SELECTOR.findall(expr)]


def grouping_labels(expr: str) -> set[str]:
    """Label names in ``by (…)``, ``on (…)`` … clauses."""
    return {
        label.strip()
        for group in _GROUPING.findall(_STRING.sub('""', expr))
        for label in group.split(",")
        if label.strip()
    }


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (hostname) (rate(foo_total{a="b"}[5m]))', {"foo_total"}),
        ('a{x=~"$v"} / on(gpu) group_left(UUID) (b + c) * 1e6', {"a", "b", "c"}),
        ("last_over_time(x:y[$__range]) > bool 0 and z offset 5m", {"x:y", "z"}),
        ('count(up{job="corral"}) - sum(up)', {"up"}),
    ],
)
def test_the_promql_reader_finds_series_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# ---------------------------------------------------------------- the dashboard


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows; rows themselves left out."""
    out: list[dict[str, Any]] = []
    for p in dashboard["panels"]:
        if p["type"] == "row":
            out += p.get("panels", [])
        else:
            out.append(p)
    return out


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    d = load()
    assert d["schemaVersion"] >= 36
    assert d["uid"] and d["title"]
    ids = [p["id"] for p in d["panels"]] + [
        q["id"] for p in d["panels"] if p["type"] == "row" for q in p.get("panels", [])
    ]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(d):
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, p["title"]
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE, p["title"]
            assert t["expr"].strip(), p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]


def test_the_template_variables_exist() -> None:
    vs = variables(load())
    ds = vs["datasource"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    for name in ("hostname", "gpu"):
        v = vs[name]
        assert v["type"] == "query" and v["datasource"] == DATASOURCE
        assert v["definition"].startswith("label_values(")
    for name, v in vs.items():
        if v["type"] != "query":
            continue
        query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        assert query == v["definition"], name
        m = re.fullmatch(r"label_values\((?:(.+),\s*)?(\w+)\)", query)
        assert m, f"{name}: {query}"
        series, label = m.group(1), m.group(2)
        if series is not None:
            [metric] = metric_names(series)
            assert metric in EXPORTED, f"variable {name}: /metrics has no {metric}"
            assert label in EXPORTED[metric], f"variable {name}: {metric} has no label {label}"
            for _, used in selector_labels(series):
                assert used <= EXPORTED[metric] | TARGET_LABELS, name
        for ref in _VARIABLE.findall(query):
            assert ref in vs, f"variable {name} uses ${ref}, which does not exist"


def test_every_query_uses_exported_series_labels_and_variables() -> None:
    d = load()
    vs = variables(d)
    used: set[str] = set()
    for p in panels(d):
        for t in p["targets"]:
            expr, where = t["expr"], f"panel {p['title']!r}, query {t['refId']}"
            names = metric_names(expr)
            assert names, where
            unknown = names - set(EXPORTED)
            assert not unknown, f"{where}: /metrics does not export {sorted(unknown)}"
            used |= names
            labels = set().union(*(EXPORTED[n] for n in names)) | TARGET_LABELS
            for name, matched in selector_labels(expr):
                extra = matched - EXPORTED[name] - TARGET_LABELS
                assert not extra, f"{where}: {name} has no label {sorted(extra)}"
            extra = grouping_labels(expr) - labels
            assert not extra, f"{where}: no series here has label {sorted(extra)}"
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")))
            assert legend <= labels, f"{where}: legend uses missing labels {legend - labels}"
            for ref in _VARIABLE.findall(expr):
                assert ref in vs or ref in BUILTIN_VARIABLES, f"{where}: no variable ${ref}"
    missing = REQUIRED - used
    assert not missing, f"the dashboard has no panel for {sorted(missing)}"


def test_hostname_is_lower_case_as_corral_exports_it() -> None:
    # dcgm-exporter spells it "Hostname"; dashboards copied from its examples would
    # match nothing.
    assert "Hostname" not in DASHBOARD.read_text(), "Corral's label is `hostname`"
    assert all("hostname" in labels for name, labels in EXPORTED.items() if "gpu" in labels)
