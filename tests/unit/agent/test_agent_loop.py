"""The whole agent, in-process, against a fake server (`agent_fake_server`)."""

from __future__ import annotations

import io
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_fake_server import FakeServer
from agent_testkit import assignment, kill_jobs, wait_for

from corral.agent import jobdirs
from corral.agent.agent import Agent, run_agent
from corral.agent.config import AgentConfig
from corral.agent.gpus import SimulatedBackend
from corral.agent.retry import Backoff
from corral.agent.runtime import cgroups
from corral.core.schemas import Assignment, JobReport
from corral.core.states import JobState

AS_ROOT = os.geteuid() == 0

MakeAgent = Callable[..., Agent]


def fast_backoff() -> Backoff:
    return Backoff(initial=0.02, maximum=0.1)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    s = FakeServer()
    yield s
    s.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "agent"
    kill_jobs(tmp_path / "agent")


@pytest.fixture
def make_agent(server: FakeServer, state_dir: Path) -> Iterator[MakeAgent]:
    """Builds agents on the fake server; every one is shut down after the test."""
    agents: list[Agent] = []

    def make(join_token: str | None = "join-secret", start: bool = True, **config: object) -> Agent:
        settings: dict[str, object] = {
            "server": "http://corral.test",
            "join_token": join_token,
            "name": "gpu-1",
            "state_dir": state_dir,
            "log_flush_seconds": 0.05,
        }
        if AS_ROOT:  # jobs need an account; root is the only one every machine has
            settings.update(user_map={"*": "root"}, allow_root_jobs=True)
        settings.update(config)
        agent = Agent(
            AgentConfig(**settings),
            client=server.client(),
            gpus=SimulatedBackend("4xA100-80GB", "gpu-1"),
            out=io.StringIO(),
            backoff=fast_backoff,
        )
        agents.append(agent)
        if start:
            assert agent.start()
        return agent

    yield make
    for agent in agents:
        if not agent.stop_event.is_set():
            agent.shutdown()
        print(output(agent))  # pytest shows it when the test failed


def output(agent: Agent) -> str:
    out = agent.console.out
    assert isinstance(out, io.StringIO)
    return out.getvalue()


def states(server: FakeServer, job_id: int, attempt: int = 1, rank: int = 0) -> list[str]:
    return [r.state for r in server.reports_for(job_id, attempt, rank)]


def final(
    server: FakeServer, job_id: int, attempt: int = 1, timeout: float = 10, rank: int = 0
) -> JobReport:
    return wait_for(
        lambda: server.final_report(job_id, attempt, rank), f"job {job_id}'s end", timeout
    )


def running(server: FakeServer, job_id: int, attempt: int = 1, rank: int = 0) -> JobReport:
    return wait_for(
        lambda: next(
            (r for r in server.reports_for(job_id, attempt, rank) if r.state == "running"), None
        ),
        f"job {job_id} rank {rank} to run",
    )


# ------------------------------------------------------------------ registration


def test_registers_and_keeps_the_node_token(
    server: FakeServer, make_agent: MakeAgent, state_dir: Path
) -> None:
    agent = make_agent()
    token_file = state_dir / "node-token"
    assert token_file.read_text().strip() == "node-secret"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    [inventory] = server.registrations
    assert (inventory.name, inventory.gpu_backend, inventory.simulated) == (
        "gpu-1",
        "simulated",
        True,
    )
    assert len(inventory.gpus) == 4
    wait_for(lambda: server.sync_tokens, "the first sync")
    assert set(server.sync_tokens) == {"node-secret"}
    text = output(agent)
    assert "corral agent: GPUs (simulated): 4 simulated GPUs" in text and "SIMULATED" in text
    assert "registered as node gpu-1 with http://corral.test" in text


def test_restart_without_join_token_uses_the_stored_node_token(
    server: FakeServer, make_agent: MakeAgent
) -> None:
    make_agent().shutdown()
    server.join_token = "expired"
    make_agent(join_token=None)
    assert len(server.registrations) == 2


def test_refused_token_exits_with_a_clear_error(server: FakeServer, make_agent: MakeAgent) -> None:
    agent = make_agent(join_token="wrong", start=False)
    assert agent.run() == 1
    assert "error: the server at http://corral.test refused the join token" in output(agent)


def test_register_retries_until_the_server_answers(
    server: FakeServer, make_agent: MakeAgent
) -> None:
    server.set_down(True)
    agent = make_agent(start=False)
    started = threading.Thread(target=agent.start)
    started.start()
    wait_for(lambda: "server unreachable, retrying…" in output(agent), "the retry line")
    server.set_down(False)
    started.join(10)
    assert agent.registration is not None
    assert output(agent).count("server unreachable") == 1
    assert "corral agent: connected" in output(agent)


def test_start_up_says_how_process_job_limits_are_enforced(
    server: FakeServer, make_agent: MakeAgent
) -> None:
    off = make_agent(cgroups=False)
    assert (
        "corral agent: process job limits: none (off: --no-cgroups); their CPU and memory "
        "limits are not enforced\n"
    ) in output(off)
    off.shutdown()
    on = make_agent()
    assert f"corral agent: {cgroups.detect().describe()}\n" in output(on)  # v1 on CI
    server.set_assignments(assignment(1, ["true"], memory_bytes=64 << 20))
    assert final(server, 1).exit_code == 0
    note = cgroups.detect().limits_note(None, 64 << 20)  # "limits: memory 64 MiB (cgroup v1)"
    started = next(line for line in output(on).splitlines() if ": started, " in line)
    assert started.endswith(f"; {note}")


# ------------------------------------------------------------------ running jobs


def test_runs_an_assignment_and_reports_its_exit(server: FakeServer, make_agent: MakeAgent) -> None:
    agent = make_agent()
    server.set_assignments(
        assignment(1, ["sh", "-c", "echo hello; echo oops >&2; exit 3"], gpu_ids=[0, 1])
    )
    report = final(server, 1)
    assert (report.state, report.exit_code) == ("exited", 3)
    assert states(server, 1) == ["starting", "running", "exited"]
    assert server.reports_for(1)[1].pid
    assert server.log_of(1) == b"hello\noops\n"  # shipped before the exit was reported
    job_dir = agent.state_dir / "jobs" / "1-1"
    wait_for(lambda: jobdirs.is_reported(job_dir), "the reported marker")
    text = output(agent)
    assert "job 1 (job-1) attempt 1: started, pid" in text and "GPUs 0,1" in text
    assert "job 1 (job-1) attempt 1: exited with code 3" in text


def test_logs_are_shipped_with_running_offsets(server: FakeServer, make_agent: MakeAgent) -> None:
    make_agent()
    script = "for i in 1 2 3 4 5 6; do echo line $i; sleep 0.05; done"
    server.set_assignments(assignment(2, ["sh", "-c", script]))
    final(server, 2)
    expected = b"".join(b"line %d\n" % i for i in range(1, 7))
    assert server.log_of(2) == expected
    puts = [(offset, n) for key, offset, n in server.log_puts if key == (2, 1, 0)]
    assert len(puts) > 1, "output is shipped while the job runs, not only at its end"
    position = 0
    for offset, n in puts:
        assert offset == position
        position += n
    assert position == len(expected)


def test_stop_true_stops_a_running_job(server: FakeServer, make_agent: MakeAgent) -> None:
    agent = make_agent()
    job = assignment(3, ["sleep", "300"], grace_seconds=30)
    server.set_assignments(job)
    running(server, 3)
    server.set_assignments(job.model_copy(update={"stop": True, "state": JobState.STOPPING}))
    report = final(server, 3)
    assert (report.state, report.exit_code) == ("exited", 143)
    assert "stopping (the server asked to stop it)" in output(agent)


def test_assignments_it_never_ran(server: FakeServer, make_agent: MakeAgent) -> None:
    make_agent()
    server.set_assignments(
        assignment(4, stop=True, state="stopping"),
        assignment(5, state="running"),
    )
    never = final(server, 4)
    assert (never.state, never.exit_code, never.message) == (
        "exited",
        None,
        "stopped before it started",
    )
    lost = final(server, 5)
    assert (lost.state, lost.exit_code, lost.message) == (
        "exited",
        None,
        "the agent has no record of this job (its state on the node was lost)",
    )
    assert states(server, 4) == ["exited"] and states(server, 5) == ["exited"]


def test_failed_starts_are_reported(server: FakeServer, make_agent: MakeAgent) -> None:
    make_agent()
    server.set_assignments(assignment(6, workdir="/no/such/dir"))
    report = final(server, 6)
    assert states(server, 6) == ["starting", "failed"]
    assert report.message == "working directory /no/such/dir does not exist on node gpu-1"


@pytest.mark.skipif(not AS_ROOT, reason="account switching needs a root agent")
def test_root_jobs_are_refused_without_allow_root_jobs(
    server: FakeServer, make_agent: MakeAgent
) -> None:
    agent = make_agent(allow_root_jobs=False)
    server.set_assignments(assignment(6))
    report = final(server, 6)
    assert report.state == "failed"
    assert report.message == (
        "refusing to run job as root (start the agent with --allow-root-jobs to permit it)"
    )
    assert "running as root: jobs run as their users' Unix accounts" in output(agent)


def test_a_job_the_server_no_longer_lists_is_stopped(
    server: FakeServer, make_agent: MakeAgent
) -> None:
    agent = make_agent()
    server.set_assignments(assignment(7, ["sleep", "300"], grace_seconds=30))
    running(server, 7)
    server.set_assignments()
    report = final(server, 7)
    assert report.exit_code == 143
    assert (
        "WARNING: job 7 (job-7) attempt 1 is running here but the server no longer wants"
        in output(agent)
    )


# ------------------------------------------------------------------ consistency


def test_a_stale_generation_is_ignored(server: FakeServer, make_agent: MakeAgent) -> None:
    agent = make_agent()
    server.set_assignments(assignment(8, ["sleep", "300"]), generation=5)
    running(server, 8)
    # A late answer from before a partition, in which job 8 did not exist yet.
    server.send_stale(3)
    wait_for(server.stale_delivered.is_set, "the stale answer to be delivered")
    assert agent.supervisor is not None
    ticks = agent.supervisor.ticks
    wait_for(
        lambda: agent.supervisor is not None and agent.supervisor.ticks >= ticks + 3,
        "the supervisor to go round",
    )
    assert agent.desired.generation == 5
    assert states(server, 8) == ["starting", "running"]
    assert [h.job_id for h in agent.supervisor.running()] == [8]


def test_an_older_attempt_is_never_started(
    server: FakeServer, make_agent: MakeAgent, state_dir: Path
) -> None:
    agent = make_agent()
    server.set_assignments(assignment(9, ["true"], attempt=2))
    final(server, 9, attempt=2)
    server.set_assignments(assignment(9, ["true"], attempt=1))
    wait_for(
        lambda: "job 9 attempt 1: ignored, a newer attempt" in output(agent), "the fencing line"
    )
    assert states(server, 9, attempt=1) == []
    assert not (state_dir / "jobs" / "9-1").exists()


def test_a_resent_assignment_is_not_started_twice(
    server: FakeServer, make_agent: MakeAgent
) -> None:
    agent = make_agent()
    job = assignment(10, ["sh", "-c", "echo once"])
    server.set_assignments(job)
    final(server, 10)
    server.set_assignments(job)  # e.g. the server had not yet processed the report
    assert agent.supervisor is not None
    ticks = agent.supervisor.ticks
    wait_for(
        lambda: agent.supervisor is not None and agent.supervisor.ticks >= ticks + 3,
        "the supervisor to go round",
    )
    assert states(server, 10).count("starting") == 1


def test_reports_survive_a_server_outage(server: FakeServer, make_agent: MakeAgent) -> None:
    agent = make_agent()
    release = agent.state_dir / "release"
    script = f"echo before; while [ ! -e {release} ]; do sleep 0.02; done; echo after; exit 4"
    server.set_assignments(assignment(11, ["sh", "-c", script]))
    running(server, 11)
    server.set_down(True)
    release.touch()
    job_dir = agent.state_dir / "jobs" / "11-1"
    wait_for(lambda: jobdirs.read_exit_code(job_dir) == 4, "the job to end")
    wait_for(lambda: "server unreachable, retrying…" in output(agent), "the outage line")
    assert server.final_report(11) is None
    server.set_down(False)
    report = final(server, 11)
    assert report.exit_code == 4
    assert server.log_of(11) == b"before\nafter\n"
    wait_for(lambda: "corral agent: connected" in output(agent), "the reconnect line")


def test_jobs_survive_an_agent_restart(
    server: FakeServer, make_agent: MakeAgent, state_dir: Path
) -> None:
    first = make_agent()
    release = state_dir / "release"
    script = f"echo one; while [ ! -e {release} ]; do sleep 0.02; done; echo two; exit 5"
    job = assignment(12, ["sh", "-c", script])
    server.set_assignments(job)
    pid = running(server, 12).pid
    left = first.shutdown()
    assert [h.pid for h in left] == [pid]
    assert "left 1 job(s) running" in output(first)

    second = make_agent(join_token=None)
    assert "job 12 (job-12) attempt 1: re-adopted after the agent restarted" in output(second)
    release.touch()
    report = final(server, 12)
    assert report.exit_code == 5
    assert states(server, 12).count("starting") == 1
    assert server.log_of(12) == b"one\ntwo\n"


def test_stopping_the_agent_leaves_jobs_running(server: FakeServer, make_agent: MakeAgent) -> None:
    agent = make_agent(start=False)
    exit_codes: list[int] = []
    thread = threading.Thread(target=lambda: exit_codes.append(agent.run()))
    thread.start()
    server.set_assignments(assignment(13, ["sleep", "300"]))
    pid = running(server, 13).pid
    assert pid is not None
    agent.request_stop()  # what run_agent's SIGTERM/SIGINT handler does
    thread.join(10)
    assert exit_codes == [0]
    os.kill(pid, 0)  # the job is still alive
    assert (
        f"stopped; left 1 job(s) running, to re-adopt on restart: job 13 attempt 1 (pid {pid})"
        in output(agent)
    )


def test_run_agent_exits_0_on_sigterm(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on: the server is unreachable
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state_dir = tmp_path / "agent"
    config = AgentConfig(
        server=f"http://127.0.0.1:{port}",
        join_token="t",
        name="gpu-9",
        state_dir=state_dir,
        simulate_gpus="1xT4",
    )

    def terminate_once_started() -> None:
        wait_for(state_dir.exists, "the agent to start")
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_once_started)
    killer.start()
    assert run_agent(config) == 0
    killer.join()


def test_a_revoked_node_token_stops_the_agent(server: FakeServer, make_agent: MakeAgent) -> None:
    agent = make_agent(start=False)
    exit_codes: list[int] = []
    thread = threading.Thread(target=lambda: exit_codes.append(agent.run()))
    thread.start()
    wait_for(lambda: server.sync_tokens, "the first sync")
    server.node_token = "rotated"  # the admin removed the node
    server.set_assignments()  # ends the long poll; the next sync is refused
    thread.join(10)
    assert exit_codes == [1]
    assert "error: the server no longer accepts this node's token" in output(agent)


def test_a_preempting_job_starts_only_after_its_victim_is_gone(
    server: FakeServer, make_agent: MakeAgent
) -> None:
    make_agent()
    # The victim takes 1 s to honour SIGTERM; the job that preempted it must not start
    # before then, since it was given the victim's GPUs.
    victim = assignment(
        20,
        ["sh", "-c", "trap 'sleep 1; exit 0' TERM; sleep 300 & wait"],
        grace_seconds=30,
        gpu_ids=[0],
    )
    server.set_assignments(victim)
    running(server, 20)
    newcomer = assignment(21, ["true"], gpu_ids=[0], after=[20])
    server.set_assignments(
        victim.model_copy(update={"stop": True, "state": JobState.STOPPING}), newcomer
    )
    report = final(server, 20)
    assert report.state == "exited"
    final(server, 21)
    victim_end = max(r.at for r in server.reports_for(20) if r.at is not None)
    newcomer_start = min(
        r.at for r in server.reports_for(21) if r.state == "running" and r.at is not None
    )
    assert newcomer_start >= victim_end


# ------------------------------------------------------------------ gangs


def gang_worker(job_id: int, rank: int, command: list[str], **overrides: object) -> Assignment:
    """Worker ``rank`` of a gang of 3 whose rank 0 runs on this node (gpu-1)."""
    fields: dict[str, object] = {
        "name": "gang",
        "rank": rank,
        "world_size": 3,
        "master_addr": "gpu-1",
        "master_port": 29500,
        "gpu_ids": [rank],
    }
    fields.update(overrides)
    return assignment(job_id, command, **fields)


def test_two_workers_of_a_gang_on_one_node_are_supervised_separately(
    server: FakeServer, make_agent: MakeAgent, state_dir: Path
) -> None:
    agent = make_agent()
    # Each worker waits for the other, so both must run at the same time.
    script = (
        'echo "rank $CORRAL_WORKER_RANK of $CORRAL_WORLD_SIZE via $MASTER_ADDR:$MASTER_PORT '
        'gpus $CUDA_VISIBLE_DEVICES"; : > "$BARRIER/$CORRAL_WORKER_RANK"; '
        'while [ ! -e "$BARRIER/0" ] || [ ! -e "$BARRIER/1" ]; do sleep 0.02; done; '
        "exit $((10 + CORRAL_WORKER_RANK))"
    )
    barrier = state_dir.parent / "barrier"
    barrier.mkdir()
    env = {"BARRIER": str(barrier)}
    server.set_assignments(
        gang_worker(30, 0, ["sh", "-c", script], env=env),
        gang_worker(30, 1, ["sh", "-c", script], env=env),
    )
    first, second = final(server, 30, rank=0), final(server, 30, rank=1)
    assert (first.state, first.rank, first.exit_code) == ("exited", 0, 10)
    assert (second.state, second.rank, second.exit_code) == ("exited", 1, 11)
    assert states(server, 30, rank=0) == ["starting", "running", "exited"]
    assert states(server, 30, rank=1) == ["starting", "running", "exited"]
    pids = {running(server, 30, rank=r).pid for r in (0, 1)}
    assert len(pids) == 2 and None not in pids
    assert server.log_of(30, rank=0) == b"rank 0 of 3 via gpu-1:29500 gpus 0\n"
    assert server.log_of(30, rank=1) == b"rank 1 of 3 via gpu-1:29500 gpus 1\n"
    assert server.reports_for(30, rank=2) == []  # rank 2 is another node's
    # Rank 0 keeps the directory name of a job that is not a gang.
    for directory in (state_dir / "jobs" / "30-1", state_dir / "jobs" / "30-1-r1"):
        wait_for(lambda d=directory: jobdirs.is_reported(d), f"{directory.name} reported")
    text = output(agent)
    assert "job 30 (gang) attempt 1 rank 0 of 3: exited with code 10" in text
    assert "job 30 (gang) attempt 1 rank 1 of 3: exited with code 11" in text


def test_a_stop_of_a_gang_stops_every_worker_of_it_here(
    server: FakeServer, make_agent: MakeAgent
) -> None:
    make_agent()
    workers = [gang_worker(31, r, ["sleep", "300"], grace_seconds=30) for r in (0, 1)]
    server.set_assignments(*workers)
    running(server, 31, rank=0)
    running(server, 31, rank=1)
    # The stop comes with rank 0 only; rank 1's assignment has not caught up yet.
    server.set_assignments(
        workers[0].model_copy(update={"stop": True, "state": JobState.STOPPING}), workers[1]
    )
    for rank in (0, 1):
        report = final(server, 31, rank=rank)
        assert (report.state, report.exit_code) == ("exited", 143)


def test_a_gang_worker_that_never_started_is_stopped_with_its_gang(
    server: FakeServer, make_agent: MakeAgent
) -> None:
    make_agent()
    # The stop comes with rank 0 only, before rank 1 was started here: rank 1 is not
    # started at all, and says so.
    server.set_assignments(
        gang_worker(32, 0, ["sleep", "300"], stop=True, state="stopping"),
        gang_worker(32, 1, ["true"]),
    )
    for rank in (0, 1):
        report = final(server, 32, rank=rank)
        assert (report.state, report.message) == ("exited", "stopped before it started")
        assert states(server, 32, rank=rank) == ["exited"]


def test_a_gang_worker_is_readopted_after_an_agent_restart(
    server: FakeServer, make_agent: MakeAgent, state_dir: Path
) -> None:
    first = make_agent()
    release = state_dir / "release"
    script = (
        f"echo one $CORRAL_WORKER_RANK; while [ ! -e {release} ]; do sleep 0.02; done; "
        "echo two $CORRAL_WORKER_RANK; exit $((20 + CORRAL_WORKER_RANK))"
    )
    workers = [gang_worker(33, r, ["sh", "-c", script]) for r in (1, 2)]
    server.set_assignments(*workers)
    pids = {r: running(server, 33, rank=r).pid for r in (1, 2)}
    left = first.shutdown()
    assert sorted((h.rank, h.pid) for h in left) == sorted(pids.items())
    assert f"job 33 attempt 1 rank 2 (pid {pids[2]})" in output(first)
    assert sorted(p.name for p in (state_dir / "jobs").iterdir()) == ["33-1-r1", "33-1-r2"]

    second = make_agent(join_token=None)
    text = output(second)
    for rank in (1, 2):
        assert f"job 33 (gang) attempt 1 rank {rank} of 3: re-adopted" in text
    release.touch()
    for rank in (1, 2):
        report = final(server, 33, rank=rank)
        assert (report.rank, report.exit_code) == (rank, 20 + rank)
        assert states(server, 33, rank=rank).count("starting") == 1
        assert server.log_of(33, rank=rank) == f"one {rank}\ntwo {rank}\n".encode()
    assert server.reports_for(33, rank=0) == []
