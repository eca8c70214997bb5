"""End to end: monitoring on a real server with real agents (simulated GPUs).

- An agent that stops sending heartbeats (frozen with SIGSTOP) turns its node
  `not_ready`, then `down`, within the configured times, as `corral nodes` shows; it is
  `ready` again once it resumes.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cluster import LocalCluster, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(
        tmp_path,
        server_args=("--node-not-ready-after", "2s", "--node-down-after", "5s"),
    )
    try:
        c.start_server()
        c.start_agent("live-a", "2xA100-80GB")
        yield c
    finally:
        for agent in c.agents.values():
            if agent.poll() is None:
                agent.send_signal(signal.SIGCONT)
        c.stop()


def node_row(c: LocalCluster, name: str) -> str:
    return next(line for line in c.cli("nodes").stdout.splitlines() if line.startswith(name))


def test_a_silent_agent_turns_its_node_not_ready_then_down(quick: LocalCluster) -> None:
    c = quick
    # Heartbeats come at most every third of the not-ready time: a healthy node with a
    # short timeout never flaps.
    time.sleep(3)
    assert c.node_state("live-a") == "ready"
    assert "ready" in node_row(c, "live-a")
    agent = c.agents["live-a"]
    agent.send_signal(signal.SIGSTOP)
    frozen = time.monotonic()
    wait_for(lambda: c.node_state("live-a") == "not_ready", 10, "node not_ready")
    not_ready_after = time.monotonic() - frozen
    row = node_row(c, "live-a")
    assert "not_ready" in row
    wait_for(lambda: c.node_state("live-a") == "down", 15, "node down")
    down_after = time.monotonic() - frozen
    node = c.api("/nodes/live-a")
    assert node["state"] == "down"
    assert "no heartbeat for" in (node["reason"] or "")
    assert "down" in node_row(c, "live-a")
    # The configured times (2 s, 5 s) less the last heartbeat's age (a sync every 2/3 s)
    # plus the health check's period (1 s).
    assert 1.0 <= not_ready_after <= 4.0
    assert 4.0 <= down_after <= 7.0

    agent.send_signal(signal.SIGCONT)
    wait_for(lambda: c.node_state("live-a") == "ready", 20, "node ready again")


def _as_nobody() -> None:  # pragma: no cover - runs in the child
    import os
    import pwd

    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)


def test_top_shows_jobs_and_users_and_unmanaged_use_blocks_a_gpu(tmp_path: Path) -> None:
    import os
    import subprocess

    c = LocalCluster(tmp_path)
    hand: subprocess.Popen[bytes] | None = None
    try:
        c.start_server()
        c.start_agent("mon-a", "2xA100-80GB")
        c.cli(
            "submit", "busy", "-g", "1", "-e", "CORRAL_SIM_LOAD=util:80,mem:20GiB",
            "--", "sleep", "60",
        )  # fmt: skip
        busy = c.wait_job("busy", {"running"})
        other = 1 - busy["gpu_ids"][0]
        # A process started by hand, outside Corral, on the other simulated GPU.
        env = dict(
            os.environ,
            CUDA_VISIBLE_DEVICES=str(other),
            CORRAL_SIM_NODE="mon-a",
            CORRAL_SIM_LOAD="util:30,mem:5GiB",
        )
        hand = subprocess.Popen(["sleep", "120"], env=env, preexec_fn=_as_nobody)
        user = "nobody" if os.geteuid() == 0 else os.environ.get("USER", "")

        def frame_shows_it() -> str | None:
            out = c.cli("top", "--once").stdout
            return out if f"UNMANAGED {user}" in out else None

        frame = wait_for(frame_shows_it, 20, "top to show the unmanaged process")
        lines = {line.split()[0]: line for line in frame.splitlines() if line.startswith("  ")}
        assert "busy (admin)" in lines[str(busy["gpu_ids"][0])]
        assert "80%" in lines[str(busy["gpu_ids"][0])]
        assert f"UNMANAGED {user} (pid {hand.pid} sleep)" in lines[str(other)]
        assert "SIMULATED" in frame

        # The scheduler hands that GPU to no one while it is used outside Corral.
        c.cli("submit", "waits", "-g", "1", "--", "sleep", "1")
        time.sleep(3)
        waits = c.job("waits")
        assert waits["state"] == "pending", waits
        assert c.api("/nodes/mon-a")["gpus_allocated"] >= 1

        hand.kill()
        hand.wait(5)
        hand = None
        job = c.wait_job("waits", {"running", "succeeded"}, timeout=20)
        assert job["gpu_ids"] == [other]
    finally:
        if hand is not None:
            hand.kill()
            hand.wait(5)
        c.stop()
