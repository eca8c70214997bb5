"""Interactive sessions through the in-process server: who may open them, and how the
server pairs a user's WebSocket with the agent's and relays between them (the agent is
played by the test: it long-polls ``/agent/tunnels`` and dials back)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import WebSocketDenialResponse

from conftest import API, Harness
from corral.core import tunnel as wire
from corral.core.tunnel import TerminalStart


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    # The relay does not touch the database beyond reads: SQLite is enough here.
    yield f"sqlite:///{tmp_path}/corral.db"


def _running_job(server: Harness, name: str = "dev", **fields: Any) -> tuple[str, dict[str, Any]]:
    """A node, and job ``name`` running on it; (the node's token, the job)."""
    node = server.register("n1", gpus=1)
    assert server.submit(name, kind="interactive", **fields).status_code == 201
    server.cycle()
    job = server.job(name)
    report = {"job_id": job["id"], "attempt": job["attempt"], "state": "running", "pid": 4242}
    server.sync(node, [report])
    assert server.job(name)["state"] == "running"
    return node, server.job(name)


def _refused(server: Harness, url: str, token: str | None = None) -> WebSocketDenialResponse:
    """The server's refusal of a WebSocket to ``url``."""
    with pytest.raises(WebSocketDenialResponse) as refused:  # noqa: SIM117 (the raise is the point)
        with server.http.websocket_connect(url, headers=server.h(token)):
            pass
    return refused.value


def _offers(server: Harness, node: str, wait: float = 5) -> list[dict[str, Any]]:
    """The node's offers, waiting up to ``wait`` seconds for the first."""
    r = server.post("/agent/tunnels", {"wait_seconds": wait}, node)
    assert r.status_code == 200, r.text
    offers: list[dict[str, Any]] = r.json()["tunnels"]
    return offers


def test_terminal_is_relayed_between_user_and_agent(server: Harness) -> None:
    node, job = _running_job(server)
    start = TerminalStart(command=["sh"], rows=30, cols=100, term="xterm")
    with server.http.websocket_connect(
        f"{API}/jobs/default/dev/terminal", headers=server.h(server.admin)
    ) as user:
        user.send_text(start.model_dump_json())
        [offer] = _offers(server, node)
        assert offer["kind"] == "terminal" and offer["job_id"] == job["id"]
        assert offer["attempt"] == job["attempt"] and offer["user"] == "admin"
        assert TerminalStart.model_validate(offer["start"]) == start
        assert _offers(server, node, wait=0) == []  # handed out once
        with server.http.websocket_connect(
            f"{API}/agent/tunnels/{offer['id']}", headers=server.h(node)
        ) as agent:
            user.send_bytes(wire.data_message(wire.STDIN, b"ls\r"))
            assert agent.receive_bytes() == wire.data_message(wire.STDIN, b"ls\r")
            user.send_text(wire.resize(40, 120))
            assert wire.parse_control(agent.receive_text()).rows == 40
            agent.send_bytes(wire.data_message(wire.STDOUT, b"file\r\n"))
            assert user.receive_bytes() == wire.data_message(wire.STDOUT, b"file\r\n")
            agent.send_text(wire.exit_message(3))
            agent.close()
        assert wire.parse_control(user.receive_text()).code == 3
    assert len(server.ctx.tunnels) == 0
    events = [e for e in server.job("dev")["events"] if e["type"] == "session"]
    assert events and events[-1]["actor"] == "admin"
    assert "opened a terminal: sh" in events[-1]["message"]


def test_only_the_owner_and_admins_may_open_a_terminal(server: Harness) -> None:
    alice = server.make_user("alice")
    bob = server.make_user("bob")  # a member of the same project
    node = server.register("n1", gpus=1)
    assert server.submit("mine", token=alice).status_code == 201
    server.cycle()
    job = server.job("mine")
    server.sync(node, [{"job_id": job["id"], "attempt": 1, "state": "running", "pid": 1}])
    server.ctx.tunnels.dial_timeout = 0.5  # the sessions let in below are never served
    refused = _refused(server, f"{API}/jobs/default/mine/terminal", bob)
    assert refused.status_code == 403
    body = json.loads(refused.content)["error"]
    assert body["code"] == "forbidden"
    assert body["message"] == (
        "only the owner of job mine (alice) and admins may open a terminal in it; you are bob"
    )
    for token in (alice, server.admin):  # the owner and an admin are let in
        with server.http.websocket_connect(
            f"{API}/jobs/default/mine/terminal", headers=server.h(token)
        ) as ws:
            ws.send_text(TerminalStart().model_dump_json())
            assert len(_offers(server, node)) == 1
    refused = _refused(server, f"{API}/jobs/default/mine/terminal")
    assert refused.status_code == 401
    refused = _refused(server, f"{API}/jobs/default/mine/ports/8888", bob)
    assert refused.status_code == 403


def test_a_job_that_does_not_run_has_no_terminal(server: Harness) -> None:
    server.register("n1", gpus=1)
    assert server.submit("waits").status_code == 201  # no scheduling cycle: it waits
    refused = _refused(server, f"{API}/jobs/default/waits/terminal", server.admin)
    assert refused.status_code == 409
    assert "job waits is pending: one can open a terminal only in a running job" in (
        refused.content.decode()
    )


def test_a_session_times_out_when_the_agent_does_not_dial_back(server: Harness) -> None:
    node, _ = _running_job(server)
    server.ctx.tunnels.dial_timeout = 0.2
    with server.http.websocket_connect(
        f"{API}/jobs/default/dev/terminal", headers=server.h(server.admin)
    ) as user:
        user.send_text(TerminalStart().model_dump_json())
        message = wire.parse_control(user.receive_text())
    assert message.type == "error"
    assert message.message.startswith(
        "the agent of node n1 did not connect back for this session within 0.2 s: "
        "it has not asked the server for sessions since the server started"
    )
    assert _offers(server, node, wait=0) == []  # withdrawn with the session
    assert len(server.ctx.tunnels) == 0


def test_an_agent_can_dial_back_only_for_its_own_sessions(server: Harness) -> None:
    node, _ = _running_job(server)
    other = server.register("n2", gpus=1)
    with server.http.websocket_connect(
        f"{API}/jobs/default/dev/terminal", headers=server.h(server.admin)
    ) as user:
        user.send_text(TerminalStart().model_dump_json())
        [offer] = _offers(server, node)
        for token in (other, server.admin, "crn_nonsense"):
            refused = _refused(server, f"{API}/agent/tunnels/{offer['id']}", token)
            assert refused.status_code in (401, 404)
        with server.http.websocket_connect(
            f"{API}/agent/tunnels/{offer['id']}", headers=server.h(node)
        ) as agent:
            twice = _refused(server, f"{API}/agent/tunnels/{offer['id']}", node)
            assert twice.status_code == 404
            agent.send_text(wire.exit_message(0))
        assert wire.parse_control(user.receive_text()).code == 0


def test_port_urls_need_a_token_and_an_exposed_port(server: Harness) -> None:
    _, job = _running_job(server, ports=[8888])
    assert job["ports"] == [8888]
    url = f"/jobs/{job['id']}/ports/8888/lab"
    assert server.http.get(url).status_code == 401
    bad = server.http.get(url, headers=server.h("crl_not-a-token"))
    assert bad.status_code == 401
    bob = server.make_user("bob")
    refused = server.http.get(url, headers=server.h(bob))
    assert refused.status_code == 403
    assert refused.json()["error"]["message"].startswith("only the owner of job dev (admin)")
    other = server.http.get(f"/jobs/{job['id']}/ports/9999/", headers=server.h(server.admin))
    assert other.status_code == 404
    assert "does not expose port 9999 (its ports: 8888;" in other.json()["error"]["message"]
    # The agent never answers here: the proxy says so instead of hanging.
    server.ctx.tunnels.dial_timeout = 0.2
    late = server.http.get(url, headers=server.h(server.admin))
    assert late.status_code == 504
    assert "did not connect back" in late.json()["error"]["message"]


def test_the_job_page_links_to_the_jobs_ports(server: Harness) -> None:
    _, job = _running_job(server, ports=[8888, 6006])
    server.http.cookies.set("corral_session", server.admin)
    page = server.http.get("/jobs/default/dev")
    assert page.status_code == 200
    for port in (8888, 6006):
        assert f'href="/jobs/{job["id"]}/ports/{port}/"' in page.text
