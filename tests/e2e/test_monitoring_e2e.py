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
