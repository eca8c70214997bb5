"""Monitoring through the server: agents' batches in; the cluster now, history, and
unmanaged GPU use reaching the scheduler out."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from api.conftest import Harness

GiB = 1024**3


def gpu(index: int, node: str = "n1", util: float = 50.0, **fields: Any) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": f"GPU-{node}-{index}",
        "utilization_percent": util,
        "memory_used_bytes": 10 * GiB,
        "memory_total_bytes": 80 * GiB,
        "temperature_celsius": None,
        **fields,
    }


def sample(at: Any, gpus: list[dict[str, Any]], **host: Any) -> dict[str, Any]:
    return {"at": at.isoformat(), "gpus": gpus, "host": {"cpu_percent": 12.5, **host}}


def push(server: Harness, token: str, body: dict[str, Any]) -> None:
    r = server.post("/agent/metrics", body, token)
    assert r.status_code == 204, r.text


def test_a_batch_becomes_the_nodes_now_and_its_history(server: Harness) -> None:
    node = server.register("n1", gpus=2)
    t0 = server.clock.now()
    push(
        server,
        node,
        {
            "samples": [
                sample(t0 + timedelta(seconds=s), [gpu(0, util=10.0 * s), gpu(1, util=99.0)])
                for s in range(5)
            ]
        },
    )
    now = server.get("/metrics/now")
    [n1] = now["nodes"]
    assert n1["name"] == "n1" and n1["sampled_at"].startswith(
        (t0 + timedelta(seconds=4)).isoformat()[:19]
    )
    assert [g["sample"]["utilization_percent"] for g in n1["gpus"]] == [40.0, 99.0]
    assert n1["gpus"][0]["sample"]["temperature_celsius"] is None  # n/a stays n/a
    assert n1["host"]["cpu_percent"] == 12.5

    server.clock.advance(10)
    series = server.get("/metrics/gpus", node="n1", gpu=[0], metric=["utilization_percent"])
    assert series["resolution"] == "raw"
    [only] = series["series"]
    assert only["key"] == {"node": "n1", "gpu": 0}
    assert [v for _, v in only["points"]] == [0.0, 10.0, 20.0, 30.0, 40.0]
    hosts = server.get("/metrics/hosts", node="n1")
    assert {s["metric"] for s in hosts["series"]} == {"cpu_percent", "memory_used_bytes"}


def test_a_gpu_used_outside_corral_is_not_scheduled_until_it_is_free(server: Harness) -> None:
    node = server.register("n1", gpus=2)
    stranger = {"pid": 4242, "used_memory_bytes": GiB, "owner": "user", "user": "alice",
                "command": "python"}  # fmt: skip
    push(
        server,
        node,
        {"samples": [sample(server.clock.now(), [gpu(0, processes=[stranger]), gpu(1)])]},
    )
    n1 = server.get("/metrics/now")["nodes"][0]
    assert n1["gpus"][0]["unmanaged"] == "alice (pid 4242 python)"
    assert n1["gpus"][1]["unmanaged"] is None

    server.submit("two", gpus=2)
    server.submit("one", gpus=1)
    server.cycle()
    assert server.job("two")["state"] == "pending"
    one = server.job("one")
    assert one["state"] == "bound" and one["gpu_ids"] == [1]

    # Alice's process ends: GPU 0 is Corral's again.
    server.clock.advance(2)
    push(server, node, {"samples": [sample(server.clock.now(), [gpu(0), gpu(1)])]})
    assert server.get("/metrics/now")["nodes"][0]["gpus"][0]["unmanaged"] is None
    server.cycle()
    assert server.job("two")["state"] == "pending"  # GPU 1 is taken by "one"
    server.submit("another", gpus=1)
    server.cycle()
    assert server.job("another")["gpu_ids"] == [0]


def test_a_corral_jobs_own_process_is_not_unmanaged(server: Harness) -> None:
    node = server.register("n1", gpus=1)
    server.submit("mine", gpus=1)
    server.cycle()
    job = server.job("mine")
    own = {"pid": 10, "owner": "job", "job_id": job["id"], "rank": 0, "user": "root"}
    push(server, node, {"samples": [sample(server.clock.now(), [gpu(0, processes=[own])])]})
    g = server.get("/metrics/now")["nodes"][0]["gpus"][0]
    assert g["unmanaged"] is None
    assert [(j["name"], j["share"]) for j in g["jobs"]] == [("mine", None)]


def test_job_history_is_its_gpus_and_its_processes(server: Harness) -> None:
    node = server.register("n1", gpus=2)
    server.submit("train", gpus=1)
    server.cycle()
    job = server.job("train")
    server.sync(node, [{"job_id": job["id"], "attempt": 1, "state": "running", "pid": 7}])
    t0 = server.clock.now()
    used = job["gpu_ids"][0]
    push(
        server,
        node,
        {
            "samples": [
                {
                    "at": (t0 + timedelta(seconds=s)).isoformat(),
                    "gpus": [gpu(0, util=70.0), gpu(1, util=70.0)]
                    if used == 0
                    else [gpu(0), gpu(1, util=70.0)],
                    "host": {
                        "jobs": [{"job_id": job["id"], "cpu_percent": 150.0, "memory_bytes": GiB}]
                    },
                }
                for s in range(3)
            ]
        },
    )
    server.clock.advance(5)
    out = server.get("/metrics/jobs/default/train")
    keys = {(s["metric"], tuple(sorted(s["key"].items()))) for s in out["series"]}
    assert ("utilization_percent", (("gpu", used), ("node", "n1"))) in keys
    assert not any(s["key"].get("gpu") not in (None, used) for s in out["series"])
    cpu = next(s for s in out["series"] if s["metric"] == "cpu_percent")
    assert [v for _, v in cpu["points"]] == [150.0, 150.0, 150.0]


def test_bad_metric_names_and_windows_are_refused(server: Harness) -> None:
    server.register("n1", gpus=1)
    r = server.http.get(
        "/api/v1/metrics/gpus",
        params={"node": "n1", "metric": "bogus"},
        headers=server.h(server.admin),
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "metric"
    assert "utilization_percent" in r.json()["error"]["message"]
    r = server.http.get(
        "/api/v1/metrics/gpus",
        params={"node": "n1", "start": "2030-01-02T00:00:00Z", "end": "2030-01-01T00:00:00Z"},
        headers=server.h(server.admin),
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "start"


def test_metrics_need_a_node_token(server: Harness) -> None:
    r = server.post("/agent/metrics", {"samples": []}, server.admin)
    assert r.status_code == 401


def parse_exposition(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A small parser of Prometheus' text format (enough to check our own output)."""
    import re

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z_:][A-Za-z0-9_:]*)\{(.*)\} (\S+)", line)
        assert m, f"not a sample line: {line!r}"
        labels = dict(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2)))
        out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out


def test_prometheus_metrics_use_dcgm_names_and_labels_without_a_token(server: Harness) -> None:
    node = server.register("n1", gpus=2)
    server.post("/projects", {"name": "team-a", "quota": 1})
    server.submit("train", gpus=1, project="team-a")
    server.cycle()
    held = server.job("train", "team-a")["gpu_ids"][0]
    push(
        server,
        node,
        {
            "samples": [
                sample(
                    server.clock.now(),
                    [gpu(0, util=87.0, power_watts=250.5), gpu(1, util=3.0)],
                )
            ],
            "xid_events": [
                {"at": server.clock.now().isoformat(), "gpu_index": 1, "uuid": "GPU-n1-1",
                 "xid": 79, "message": "GPU has fallen off the bus"}
            ],
        },
    )  # fmt: skip
    r = server.http.get("/metrics")  # no token
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    series = parse_exposition(r.text)
    util = {labels["gpu"]: (labels, value) for labels, value in series["DCGM_FI_DEV_GPU_UTIL"]}
    assert util["0"][1] == 87.0 and util["1"][1] == 3.0
    labels = util[str(held)][0]
    assert labels["UUID"] == f"GPU-n1-{held}" and labels["hostname"] == "n1"
    assert labels["modelName"] == "NVIDIA A100-SXM4-80GB" and labels["device"] == f"nvidia{held}"
    assert (labels["job"], labels["project"], labels["user"]) == ("train", "team-a", "admin")
    assert labels["simulated"] == "true"
    assert "job" not in util[str(1 - held)][0]
    assert [v for _, v in series["DCGM_FI_DEV_FB_USED"]] == [10240.0, 10240.0]  # MiB
    assert "DCGM_FI_DEV_GPU_TEMP" not in series  # not available: not exported as 0
    assert [(lb["gpu"], v) for lb, v in series["DCGM_FI_DEV_XID_ERRORS"]] == [("1", 79.0)]
    assert series["corral_node_up"] == [
        ({"hostname": "n1", "state": "ready", "pool": "default"}, 1.0)
    ]
    quota = {lb["project"]: v for lb, v in series["corral_project_quota_gpus"]}
    assert quota["team-a"] == 1.0


def test_prometheus_metrics_can_require_a_token(server: Harness) -> None:
    server.ctx.settings.metrics_require_token = True
    assert server.http.get("/metrics").status_code == 401
    r = server.http.get("/metrics", headers=server.h(server.admin))
    assert r.status_code == 200


def test_disk_usage_is_the_latest_scan_per_node_largest_first(server: Harness) -> None:
    node = server.register("n1", gpus=1)
    at = server.clock.now().isoformat()
    usage = [
        {"path": "/home", "user": "alice", "used_bytes": 5 * GiB, "files": 10, "scanned_at": at},
        {"path": "/home", "user": "bob", "used_bytes": 9 * GiB, "files": 3, "scanned_at": at},
    ]
    push(server, node, {"samples": [sample(server.clock.now(), [gpu(0)])], "disk_usage": usage})
    # Batches without disk usage keep the last scan.
    push(server, node, {"samples": [sample(server.clock.now(), [gpu(0)])]})
    rows = server.get("/metrics/disk-usage")["usage"]
    assert [(r["node"], r["user"], r["used_bytes"]) for r in rows] == [
        ("n1", "bob", 9 * GiB),
        ("n1", "alice", 5 * GiB),
    ]
    assert [r["user"] for r in server.get("/metrics/disk-usage", user="alice")["usage"]] == [
        "alice"
    ]


def test_an_hour_is_raw_points_and_a_day_is_minutes_and_old_points_expire(server: Harness) -> None:
    from corral.server.loops.cycles import MetricsMaintenanceLoop

    node = server.register("n1", gpus=1)
    maintenance = MetricsMaintenanceLoop(server.ctx)
    start = int(server.clock.now().timestamp())
    assert start % 60 == 0  # minutes of samples are minutes of rollups
    # A day and a half of samples, two a minute (utilization = the minute of the hour),
    # rolled up and expired every hour as time passes.
    for ten_minutes in range(36 * 6):  # one batch per 10 minutes
        at = server.clock.now()
        samples = [
            sample(
                at + timedelta(seconds=30 * i),
                [gpu(0, util=float((ten_minutes * 10 + i // 2) % 60))],
            )
            for i in range(20)
        ]
        push(server, node, {"samples": samples})
        server.clock.advance(600)
        if ten_minutes % 6 == 5:
            maintenance.maintain()
    hour = server.get("/metrics/gpus", node="n1", metric=["utilization_percent"])
    assert hour["resolution"] == "raw"
    assert 100 <= len(hour["series"][0]["points"]) <= 122  # two a minute
    end = server.clock.now()
    day = server.get(
        "/metrics/gpus",
        node="n1",
        metric=["utilization_percent"],
        start=(end - timedelta(days=1)).isoformat(),
        end=end.isoformat(),
    )
    assert day["resolution"] == "1m"
    points = day["series"][0]["points"]
    assert 23 * 60 <= len(points) <= 24 * 60
    assert all(v == float((t - start) // 60 % 60) for t, v in points)
    store = server.ctx.metrics.store
    assert store.count("gpu", "raw") <= 2 * 60 * 3 + 2 * 60  # within the 3-hour raw retention


def test_gpus_per_project_and_user_over_time(server: Harness) -> None:
    from corral.server.loops.cycles import UsageHistoryLoop

    node = server.register("n1", gpus=4)
    server.post("/projects", {"name": "team-a", "quota": 2})
    server.submit("a1", gpus=2, project="team-a")
    server.submit("half", gpus=0.5)
    server.cycle()
    recorder = UsageHistoryLoop(server.ctx)
    recorder.record()
    server.clock.advance(15)
    server.sync(node, [{"job_id": server.job("a1", "team-a")["id"], "attempt": 1,
                        "state": "exited", "exit_code": 0}])  # fmt: skip
    server.cycle()
    recorder.record()
    server.clock.advance(5)

    out = server.get("/metrics/projects", project=["team-a"])
    [team_a] = out["series"]
    assert team_a["key"] == {"project": "team-a"}
    assert [v for _, v in team_a["points"]] == [2.0, 0.0]
    quota = server.get("/metrics/projects", project=["team-a"], metric=["quota_gpus"])
    assert [v for _, v in quota["series"][0]["points"]] == [2.0, 2.0]
    users = server.get("/metrics/users", user=["admin"])
    assert [v for _, v in users["series"][0]["points"]] == [2.5, 0.5]
