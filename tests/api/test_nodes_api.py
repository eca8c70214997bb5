"""Node registration and liveness (with a fake clock)."""

from __future__ import annotations

from api.conftest import Harness


def test_registered_node_shows_its_inventory(server: Harness) -> None:
    server.register("gpu-01", gpus=4, driver_version="550.54.15", cuda_version="12.4")
    [node] = server.get("/nodes")["nodes"]
    assert node["name"] == "gpu-01" and node["state"] == "ready"
    assert node["gpus"] == 4 and node["simulated"] is True
    assert [g["uuid"] for g in node["gpu_devices"]] == [f"GPU-gpu-01-{i}" for i in range(4)]
    assert node["last_heartbeat"] is not None
    assert (node["driver_version"], node["cuda_version"]) == ("550.54.15", "12.4")


def test_silent_node_goes_not_ready_then_down_and_its_jobs_are_lost(server: Harness) -> None:
    token = server.register("n1", gpus=2)
    server.submit("j", gpus=2)
    server.cycle()
    server.clock.advance(14)
    server.check_health()
    assert server.get("/nodes/n1")["state"] == "ready"
    server.clock.advance(2)
    server.check_health()
    node = server.get("/nodes/n1")
    assert node["state"] == "not_ready" and "heartbeats late" in node["reason"]
    # Not ready: running jobs are left alone, new ones are not placed there.
    assert server.job("j")["state"] == "bound"
    server.submit("k", gpus=1)
    server.clock.advance(45)
    server.check_health()
    node = server.get("/nodes/n1")
    assert node["state"] == "down"
    job = server.job("j")
    assert job["state"] == "lost" and "stopped reporting" in job["reason"]
    assert node["gpus_allocated"] == 0
    server.cycle()
    assert server.job("k")["state"] == "pending"
    assert "no node is ready" in server.job("k")["reason"]
    # Heartbeats resume: the node is ready again and takes work.
    server.sync(token)
    assert server.get("/nodes/n1")["state"] == "ready"
    server.cycle()
    assert server.job("k")["state"] == "bound"


def test_heartbeats_keep_a_node_ready(server: Harness) -> None:
    token = server.register("n1")
    for _ in range(10):
        server.clock.advance(10)
        server.sync(token)
        server.check_health()
    assert server.get("/nodes/n1")["state"] == "ready"


def test_a_server_restart_does_not_count_its_own_downtime(server: Harness) -> None:
    server.register("n1")
    server.clock.advance(300)  # the server was away for five minutes
    server.ctx.started_at = server.clock.now()  # ...and has just started again
    server.check_health()
    assert server.get("/nodes/n1")["state"] == "ready"
    server.clock.advance(16)
    server.check_health()
    assert server.get("/nodes/n1")["state"] == "not_ready"


def test_reregistering_keeps_the_node_and_its_jobs(server: Harness) -> None:
    server.register("n1", gpus=2)
    server.submit("j", gpus=1)
    server.cycle()
    new_token = server.register("n1", gpus=2)
    assert len(server.get("/nodes")["nodes"]) == 1
    [a] = server.sync(new_token)["assignments"]
    assert a["name"] == "j"
