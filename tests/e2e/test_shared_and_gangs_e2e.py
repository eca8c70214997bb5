"""End to end: fractional, MIG and gang jobs on a real server with real agents
(simulated GPUs) on 127.0.0.1, driven through the `corral` CLI.

The gang test is a real rendezvous: worker 0 listens on MASTER_PORT, worker 1 connects
to MASTER_ADDR:MASTER_PORT from another agent's node and sends its rank.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.cluster import LocalCluster

pytestmark = pytest.mark.e2e

DONE = {"succeeded", "failed", "stopped", "lost"}

RENDEZVOUS = """
import os, socket, sys
rank = int(os.environ["CORRAL_WORKER_RANK"])
world = int(os.environ["CORRAL_WORLD_SIZE"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
print(f"rank={rank} world={world} master={addr}:{port} "
      f"cuda={os.environ['CUDA_VISIBLE_DEVICES']}", flush=True)
if rank == 0:
    server = socket.create_server((addr, port))
    server.settimeout(60)
    got = []
    for _ in range(world - 1):
        conn, _ = server.accept()
        got.append(conn.recv(16).decode())
        conn.close()
    print("rank 0 heard from ranks " + ",".join(sorted(got)), flush=True)
else:
    import time
    for _ in range(300):
        try:
            with socket.create_connection((addr, port), timeout=1) as conn:
                conn.sendall(str(rank).encode())
            break
        except OSError:
            time.sleep(0.1)
    else:
        sys.exit("could not reach the master")
    print(f"rank {rank} reached the master", flush=True)
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("e2e-shared"))
    try:
        c.start_server()
        c.start_agent("gang-a", "2xA100-80GB", "--address", "127.0.0.1")
        c.start_agent("gang-b", "2xA100-80GB", "--address", "127.0.0.1")
        c.start_agent("mig-a", "1xA100-80GB,mig=0:1g.10gb*7", "--pool", "mig")
        yield c
    finally:
        c.stop()


def test_a_gang_spans_two_nodes_and_its_workers_meet_at_the_master(
    cluster: LocalCluster,
) -> None:
    cluster.cli("submit", "gang", "-g", "2", "--workers", "2", "--", "python3", "-c", RENDEZVOUS)
    job = cluster.wait_job("gang", DONE, timeout=60)
    assert job["state"] == "succeeded", job
    workers = job["worker_list"]
    assert [w["rank"] for w in workers] == [0, 1]
    assert {w["node"] for w in workers} == {"gang-a", "gang-b"}  # 2 GPUs per node
    assert all(w["exit_code"] == 0 and w["gpu_ids"] == [0, 1] for w in workers)

    rank0 = cluster.cli("logs", "gang").stdout
    rank1 = cluster.cli("logs", "gang", "--rank", "1").stdout
    assert "rank=0 world=2 master=127.0.0.1:29500 cuda=0,1" in rank0
    assert "rank 0 heard from ranks 1" in rank0
    assert "rank=1 world=2 master=127.0.0.1:29500 cuda=0,1" in rank1
    assert "rank 1 reached the master" in rank1

    shown = cluster.cli("get", "gang").stdout
    assert "Workers:" in shown and "gang-a" in shown and "gang-b" in shown


def test_two_half_gpu_jobs_run_together_on_one_gpu(cluster: LocalCluster) -> None:
    # Both wait for the other to have started, so they must run at the same time.
    script = (
        'echo "cuda=$CUDA_VISIBLE_DEVICES fraction=$CORRAL_GPU_FRACTION '
        'bytes=$CORRAL_GPU_MEMORY_BYTES"; touch "$MARK_DIR/$CORRAL_JOB_NAME"; '
        'for i in $(seq 100); do [ -e "$MARK_DIR/$OTHER" ] && exit 0; sleep 0.1; done; exit 7'
    )
    marks = cluster.root / "marks"
    marks.mkdir()
    marks.chmod(0o777)
    for me, other in (("half-1", "half-2"), ("half-2", "half-1")):
        cluster.cli(
            "submit", me, "-g", "0.5", "--pool", "default", "-e", f"MARK_DIR={marks}",
            "-e", f"OTHER={other}", "--", "sh", "-c", script,
        )  # fmt: skip
    jobs = [cluster.wait_job(n, DONE, timeout=60) for n in ("half-1", "half-2")]
    assert [j["state"] for j in jobs] == ["succeeded", "succeeded"], jobs
    assert jobs[0]["node"] == jobs[1]["node"] and jobs[0]["gpu_ids"] == jobs[1]["gpu_ids"]
    logs = cluster.cli("logs", "half-1").stdout
    assert f"cuda={jobs[0]['gpu_ids'][0]} fraction=0.5 bytes={40 * 1024**3}" in logs


def test_a_mig_job_sees_only_its_instance(cluster: LocalCluster) -> None:
    cluster.cli(
        "submit", "tiny", "--mig", "1g.10gb", "--pool", "mig", "--", "sh", "-c",
        'echo "cuda=$CUDA_VISIBLE_DEVICES nv=$NVIDIA_VISIBLE_DEVICES"',
    )  # fmt: skip
    job = cluster.wait_job("tiny", DONE, timeout=60)
    assert job["state"] == "succeeded", job
    assert job["node"] == "mig-a" and job["gpu_ids"] == [0]
    [uuid] = job["gpu_uuids"]
    assert uuid.startswith("MIG-")
    assert f"cuda={uuid} nv={uuid}" in cluster.cli("logs", "tiny").stdout
