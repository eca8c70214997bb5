"""The whole agent (simulated GPUs, fake server): a job on part of a shared GPU whose
memory grows past its share is warned about or stopped, by its project's policy.

The job's load is declared to the simulated back-end through CORRAL_SIM_LOAD: it starts
at 4 GiB, within its 10 GiB share, and a process started later adds 30 GiB.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_fake_server import FakeServer
from agent_testkit import assignment, kill_jobs, wait_for

from corral.agent.agent import Agent
from corral.agent.config import AgentConfig
from corral.agent.gpus import SimulatedBackend
from corral.agent.retry import Backoff
from corral.core.schemas import Assignment, JobReport

GiB = 1024**3
GROWS = "sleep 0.5; CORRAL_SIM_LOAD=mem:30GiB sleep 300 & wait"
OVER = "exceeded its GPU memory share (used 34GiB of its 10GiB share on GPU 1)"


@pytest.fixture
def server() -> Iterator[FakeServer]:
    s = FakeServer()
    yield s
    s.close()


@pytest.fixture
def agent(server: FakeServer, tmp_path: Path) -> Iterator[Agent]:
    settings: dict[str, object] = {
        "server": "http://corral.test",
        "join_token": "join-secret",
        "name": "share-node",
        "state_dir": tmp_path / "agent",
        "log_flush_seconds": 0.05,
        "metrics_interval": 0.1,
        "metrics_push": 60.0,
    }
    if os.geteuid() == 0:
        settings.update(user_map={"*": "root"}, allow_root_jobs=True)
    a = Agent(
        AgentConfig(**settings),
        client=server.client(),
        gpus=SimulatedBackend("2xA100-80GB", "share-node"),
        out=io.StringIO(),
        backoff=lambda: Backoff(initial=0.02, maximum=0.1),
    )
    assert a.start()
    yield a
    a.shutdown()
    kill_jobs(tmp_path / "agent")


def growing_job(policy: str) -> Assignment:
    return assignment(
        9,
        ["sh", "-c", GROWS],
        env={"CORRAL_SIM_LOAD": "util:30,mem:4GiB"},
        gpu_ids=[1],
        gpu_uuids=["GPU-share-1"],
        gpu_memory_bytes=10 * GiB,
        gpu_memory_policy=policy,
        grace_seconds=5,
    )


def notices(server: FakeServer) -> list[str]:
    return [r.message or "" for r in server.reports_for(9) if r.state == "notice"]


def first(check: Callable[[], list[str]], what: str) -> str:
    return wait_for(lambda: check()[:1], what, timeout=15)[0]


def test_policy_stop_stops_the_job_and_its_exit_says_why(server: FakeServer, agent: Agent) -> None:
    server.set_assignments(growing_job("stop"))
    notice = first(lambda: notices(server), "the watchdog's notice")
    assert notice == f"{OVER}: stopping it (its project's policy is stop)"
    end: JobReport = wait_for(lambda: server.final_report(9), "the job's end", timeout=15)
    assert (end.state, end.exit_code) == ("exited", 143)
    assert end.message == f"{OVER}; stopped with SIGTERM"
    assert len(notices(server)) == 1


def test_policy_warn_tells_once_and_lets_the_job_run(server: FakeServer, agent: Agent) -> None:
    server.set_assignments(growing_job("warn"))
    notice = first(lambda: notices(server), "the watchdog's notice")
    assert notice.startswith(f"{OVER}: other jobs on this GPU may run out of memory")
    assert agent.sampler is not None
    taken = agent.sampler.taken
    wait_for(lambda: agent.sampler is not None and agent.sampler.taken >= taken + 5, "samples")
    assert server.final_report(9) is None  # still running, many samples later
    assert len(notices(server)) == 1
