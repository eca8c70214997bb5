"""Container jobs go only to nodes whose agent has a container engine (Docker); other
jobs go anywhere. Inside the policy a pool is split into two partitions (with and
without an engine): the fair shares and the pools' sizes do not change."""

from __future__ import annotations

from sched_factories import job, node, project, projects, settle, snapshot


def test_a_container_job_goes_only_where_docker_is() -> None:
    # Best fit alone would put the 1-GPU container job on the 2-GPU node n-small.
    nodes = [node("n-small", 2), node("n-docker", 8, containers=True)]
    jobs = [job("a", 1, name="boxed", container=True), job("a", 1, name="plain")]
    done = settle(snapshot(nodes, jobs, projects(("a", 10))))
    running = done.running()
    assert running["boxed"].node == "n-docker"
    assert running["plain"].node == "n-small"  # host processes still take the best fit


def test_without_a_container_engine_anywhere_the_reason_says_so() -> None:
    nodes = [node("n0", 8), node("n1", 8)]
    jobs = [job("a", 1, name="boxed", container=True), job("a", 1, name="plain")]
    done = settle(snapshot(nodes, jobs, projects(("a", 10))))
    assert "plain" in done.running()
    reason = done.reason("boxed")
    assert reason.startswith("a container job needs a node with a container engine (Docker)")
    assert "no node has one" in reason


def test_the_reason_names_the_pool_without_an_engine() -> None:
    nodes = [node("n0", 8, pool="x"), node("d0", 8, pool="y", containers=True)]
    jobs = [job("a", 1, name="boxed", container=True, pool="x")]
    done = settle(snapshot(nodes, jobs, projects(("a", 10))))
    assert "no node in pool x has one" in done.reason("boxed")
    # The same job without a pool runs in pool y, the one with Docker.
    done = settle(snapshot(nodes, [job("a", 1, name="boxed", container=True)], projects(("a", 10))))
    assert done.running()["boxed"].node == "d0"


def test_a_full_docker_node_makes_a_container_job_wait_with_a_docker_reason() -> None:
    nodes = [node("n0", 8), node("d0", 2, containers=True)]
    jobs = [
        job("a", 2, name="holds-docker", on="d0", ids=(0, 1), container=True),
        job("a", 1, name="boxed", container=True),
    ]
    done = settle(snapshot(nodes, jobs, projects(("a", 10))))
    assert "boxed" not in done.running()
    reason = done.reason("boxed")
    assert "with a container engine" in reason, reason  # not "no node has 1 free GPU"
    assert done.allocated()["a"] == 2


def test_a_pool_split_by_docker_keeps_its_size_for_projects_confined_to_it() -> None:
    # Pool x: 4 GPUs with Docker + 4 without. A project confined to pool x gets all 8.
    nodes = [
        node("x0", 4, pool="x", containers=True),
        node("x1", 4, pool="x"),
        node("y0", 8, pool="y"),
    ]
    confined = project("a", 8.0, order=0, pools=("x",))
    jobs = [
        job("a", 4, name="boxed", container=True),
        job("a", 4, name="j0"),
        job("a", 4, name="j1"),
    ]
    done = settle(snapshot(nodes, jobs, (confined, project("b", 0.0, order=1))))
    placed = {name: p.node for name, p in done.running().items()}
    assert placed == {"boxed": "x0", "j0": "x1"}
    assert done.allocated()["a"] == 8  # both halves of pool x, none of pool y
    assert done.reason("j1") == "project a is at its fair share (8 of 8 GPUs)"
