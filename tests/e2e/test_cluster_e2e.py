"""End to end: a real server and two real agents (simulated GPUs) on 127.0.0.1,
driven through the `corral` CLI exactly as a user would."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cluster import LocalCluster, wait_for

pytestmark = pytest.mark.e2e

ACTIVE = {"bound", "starting", "running", "stopping"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("e2e"))
    try:
        c.start_server()
        c.start_agent("e2e-a", "4xA100-80GB")
        c.start_agent("e2e-b", "2xRTX4090")
        yield c
    finally:
        c.stop()


def test_nodes_register_with_simulated_gpus(cluster: LocalCluster) -> None:
    nodes = {n["name"]: n for n in cluster.cli_json("nodes")}
    assert set(nodes) == {"e2e-a", "e2e-b"}
    assert (nodes["e2e-a"]["gpus"], nodes["e2e-b"]["gpus"]) == (4, 2)
    assert all(n["simulated"] and n["state"] == "ready" for n in nodes.values())
    assert all(n["last_heartbeat"] for n in nodes.values())
    table = cluster.cli("nodes").stdout
    assert "simulated" in table.lower()


def test_job_sees_the_gpus_it_was_bound_to_and_logs_come_back(cluster: LocalCluster) -> None:
    script = (
        'echo "node=$CORRAL_NODE cuda=$CUDA_VISIBLE_DEVICES nv=$NVIDIA_VISIBLE_DEVICES '
        'job=$CORRAL_JOB_NAME project=$CORRAL_JOB_PROJECT"; echo to-stderr >&2'
    )
    for i, gpus in enumerate([2, 1, 3]):
        cluster.cli(
            "submit",
            f"see-{i}",
            "--gpus",
            str(gpus),
            "--env",
            "GREETING=hi",
            "--",
            "sh",
            "-c",
            script + '; echo "greeting=$GREETING"',
        )
    for i, gpus in enumerate([2, 1, 3]):
        job = cluster.wait_job(f"see-{i}", {"succeeded", "failed"})
        assert job["state"] == "succeeded", job
        assert job["exit_code"] == 0
        assert len(job["gpu_ids"]) == gpus
        got = cluster.cli_json("get", f"see-{i}")
        assert got["node"] == job["node"] and got["gpu_ids"] == job["gpu_ids"]
        logs = cluster.cli("logs", f"see-{i}").stdout
        cuda = ",".join(str(g) for g in job["gpu_ids"])
        assert f"node={job['node']} cuda={cuda} " in logs
        assert f"nv={','.join(job['gpu_uuids'])} " in logs
        assert f"job=see-{i} project=default" in logs
        assert "to-stderr" in logs and "greeting=hi" in logs


def test_exit_codes_are_recorded(cluster: LocalCluster) -> None:
    cluster.cli("submit", "exits-3", "--gpus", "1", "--", "sh", "-c", "echo failing; exit 3")
    cluster.cli("submit", "no-such-program", "--", "/nonexistent/program")
    job = cluster.wait_job("exits-3", {"succeeded", "failed"})
    assert (job["state"], job["exit_code"]) == ("failed", 3)
    assert job["reason"] == "exited with code 3"
    job = cluster.wait_job("no-such-program", {"succeeded", "failed"})
    assert job["state"] == "failed" and job["exit_code"] == 127
    out = cluster.cli("get", "exits-3").stdout
    assert "failed" in out and "3" in out


def test_logs_follow_streams_until_the_job_ends(cluster: LocalCluster) -> None:
    cluster.cli(
        "submit", "ticker", "--", "sh", "-c", "for i in 1 2 3 4 5; do echo tick $i; sleep 0.3; done"
    )
    cluster.wait_job("ticker", {"running", "succeeded"})
    r = cluster.cli("logs", "ticker", "-f", timeout=30)
    assert [line for line in r.stdout.splitlines() if line.startswith("tick")] == [
        f"tick {i}" for i in range(1, 6)
    ]


def test_delete_stops_a_running_job_within_its_grace_period(cluster: LocalCluster) -> None:
    # Ignores SIGTERM, so only the SIGKILL after the grace period can stop it; it also
    # starts a grandchild that must die with it (the whole process group is killed).
    cluster.cli(
        "submit",
        "stubborn",
        "--gpus",
        "1",
        "--grace-period",
        "2s",
        "--",
        "sh",
        "-c",
        "trap '' TERM; sleep 600 & echo child=$!; wait",
    )
    job = cluster.wait_job("stubborn", {"running"})
    wait_for(lambda: "child=" in cluster.cli("logs", "stubborn").stdout, 10, "the child pid")
    child = int(cluster.cli("logs", "stubborn").stdout.split("child=")[1].split()[0])
    assert _alive(child)
    started = time.monotonic()
    out = cluster.cli("delete", "stubborn").stdout
    assert "stopping" in out.lower()
    job = cluster.wait_job("stubborn", {"stopped"}, timeout=15)
    elapsed = time.monotonic() - started
    assert elapsed < 2 + 3, f"took {elapsed:.1f}s for a 2s grace period"
    assert job["exit_code"] == 128 + 9  # SIGKILL
    assert not _alive(child)
    # A polite job stops at SIGTERM, well before the grace period ends.
    cluster.cli(
        "submit",
        "polite",
        "--grace-period",
        "30s",
        "--",
        "sh",
        "-c",
        "trap 'echo got TERM; exit 0' TERM; while true; do sleep 0.1; done",
    )
    cluster.wait_job("polite", {"running"})
    started = time.monotonic()
    cluster.cli("delete", "polite")
    job = cluster.wait_job("polite", {"stopped"}, timeout=15)
    assert time.monotonic() - started < 10
    assert "got TERM" in cluster.cli("logs", "polite").stdout


def test_job_larger_than_any_node_is_rejected_clearly(cluster: LocalCluster) -> None:
    r = cluster.cli("submit", "huge", "--gpus", "5", "--", "true", check=False)
    assert r.returncode == 1
    assert "largest node has 4" in r.stderr
    assert r.stderr.strip().count("\n") == 0  # one line, no traceback
    r = cluster.cli("get", "huge", check=False)
    assert r.returncode == 1 and "not found" in r.stderr


def test_no_two_running_jobs_ever_hold_the_same_gpu(cluster: LocalCluster) -> None:
    names = [f"pack-{i}" for i in range(10)]
    for i, name in enumerate(names):
        cluster.cli(
            "submit",
            name,
            "--gpus",
            str(1 + i % 2),
            "--",
            "sh",
            "-c",
            'echo "$CORRAL_NODE:$CUDA_VISIBLE_DEVICES $(date +%s.%N)"; sleep 1; date +%s.%N',
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        jobs = [j for j in cluster.api("/jobs")["jobs"] if j["name"] in names]
        held = [(j["node"], g) for j in jobs if j["state"] in ACTIVE for g in j["gpu_ids"]]
        assert len(held) == len(set(held)), f"a GPU is held twice: {sorted(held)}"
        if all(j["state"] in {"succeeded", "failed"} for j in jobs):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("jobs did not finish in time")
    # The processes agree: intervals on the same GPU never overlap.
    spans: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for name in names:
        first, last = cluster.cli("logs", name).stdout.split("\n")[:2]
        where, start = first.split()
        node, gpus = where.split(":")
        for g in gpus.split(","):
            spans.setdefault((node, g), []).append((float(start), float(last)))
    for intervals in spans.values():
        intervals.sort()
        for (_, end), (start, _) in itertools.pairwise(intervals):
            assert start >= end


def test_outputs_json_carry_the_documented_fields(cluster: LocalCluster) -> None:
    jobs = cluster.cli_json("list")
    assert jobs
    for field in (
        "name",
        "project",
        "user",
        "kind",
        "state",
        "node",
        "gpus",
        "gpu_ids",
        "created_at",
        "started_at",
        "finished_at",
        "exit_code",
        "reason",
    ):
        assert field in jobs[0]
    nodes = cluster.cli_json("nodes")
    for field in ("name", "state", "gpus", "last_heartbeat", "simulated"):
        assert field in nodes[0]
    import yaml

    assert yaml.safe_load(cluster.cli("list", "-o", "yaml").stdout)[0]["name"] == jobs[0]["name"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_server_sigkill_loses_nothing_and_agents_reconnect(tmp_path: Path) -> None:
    c = LocalCluster(
        tmp_path, server_args=("--node-not-ready-after", "5s", "--node-down-after", "60s")
    )
    try:
        c.start_server()
        c.start_agent("crash-a", "2xA100-80GB")
        c.cli("submit", "done-before", "--", "sh", "-c", "echo finished; exit 4")
        c.wait_job("done-before", {"failed"})
        c.cli(
            "submit",
            "long",
            "--gpus",
            "2",
            "--",
            "sh",
            "-c",
            "echo started; sleep 6; echo finished-after-restart",
        )
        c.wait_job("long", {"running"})
        c.cli("submit", "queued", "--gpus", "1", "--", "sh", "-c", "echo queued-ran")
        assert c.job("queued")["state"] == "pending"
        before = {j["name"]: j for j in c.api("/jobs")["jobs"]}
        metas = [
            json.loads(m.read_text())
            for m in (tmp_path / "agents").glob("crash-a/jobs/*/meta.json")
        ]
        [meta] = [m for m in metas if m["name"] == "long"]

        c.kill_server()
        time.sleep(1)
        assert _alive(int(meta["pid"])), "the running job must survive the server's death"
        c.start_server()

        after = {j["name"]: j for j in c.api("/jobs")["jobs"]}
        assert set(after) == set(before)
        assert after["done-before"] == before["done-before"]
        assert after["queued"]["state"] == "pending"
        assert after["long"]["state"] == "running"
        # The agent reconnects by itself: fresh heartbeats after the restart.
        restarted = time.time()
        wait_for(lambda: _heartbeat_after(c, "crash-a", restarted), 20, "a new heartbeat")
        job = c.wait_job("long", {"succeeded", "failed"}, timeout=30)
        assert job["state"] == "succeeded" and job["exit_code"] == 0
        assert "finished-after-restart" in c.cli("logs", "long").stdout
        job = c.wait_job("queued", {"succeeded"}, timeout=30)
        assert "queued-ran" in c.cli("logs", "queued").stdout
        assert c.node_state("crash-a") == "ready"
    finally:
        c.stop()


def _heartbeat_after(c: LocalCluster, node: str, t: float) -> bool:
    from datetime import datetime

    hb = c.api(f"/nodes/{node}")["last_heartbeat"]
    return bool(hb) and datetime.fromisoformat(hb).timestamp() > t


def test_sigterm_stops_the_server_cleanly_while_agents_poll(tmp_path: Path) -> None:
    """Agents hold long polls open (sync, tunnels); SIGTERM must end them rather than
    let the graceful shutdown run out and cancel them with a traceback."""
    c = LocalCluster(tmp_path)
    try:
        c.start_server()
        c.start_agent("polling-a", "1xA100-80GB")
        time.sleep(1)  # both long polls are held now
        assert c.server is not None
        c.server.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once it has shut down cleanly.
        assert c.server.wait(20) in (0, -signal.SIGTERM)
        log = c.log("server.log")
        assert "Traceback" not in log and "CancelledError" not in log, log
    finally:
        c.stop()
