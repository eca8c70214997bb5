"""`corral submit --interactive/--port`, and how `corral get`/`list` show a job's ports.

(`corral bash`/`exec`/`port-forward` need a server and an agent: tests/e2e.)"""

from __future__ import annotations

import json

import httpx
from cli_fakes import FakeApi, Runner, job, job_detail

from corral.cli.jobs import INTERACTIVE_IDLE_COMMAND


def _echo_job(api: FakeApi) -> None:
    def created(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        fields = {k: body[k] for k in ("kind", "command", "ports") if k in body}
        return httpx.Response(201, json=job(body["name"], body["project"], id=42, **fields))

    api.on("POST", "/jobs", handler=created)


def test_an_interactive_job_without_a_command_just_waits(run: Runner, api: FakeApi) -> None:
    _echo_job(api)
    result = run("submit", "dev", "--interactive")
    assert result.exit_code == 0, result.output
    body = api.body("POST", "/jobs")
    assert body["kind"] == "interactive"
    assert body["command"] == list(INTERACTIVE_IDLE_COMMAND)
    assert "Open a shell in it once it runs: corral bash dev -p default" in result.output
    train = run("submit", "train", "--port", "8888")
    assert train.exit_code == 2 and "missing the command to run" in train.output


def test_ports_are_sent_and_their_urls_shown(run: Runner, api: FakeApi) -> None:
    _echo_job(api)
    result = run("submit", "nb", "--port", "8888", "--port", "6006", "--", "jupyter", "lab")
    assert result.exit_code == 0, result.output
    assert api.body("POST", "/jobs")["ports"] == [8888, 6006]
    assert "Port 8888: http://127.0.0.1:8420/jobs/42/ports/8888/" in result.output
    assert "Port 6006: http://127.0.0.1:8420/jobs/42/ports/6006/" in result.output
    assert "--ServerApp.base_url=/jobs/42/ports/8888/" in result.output
    assert "corral port-forward nb -p default 8888:8888" in result.output
    twice = run("submit", "nb", "--port", "1", "--port", "1", "--", "x")
    assert twice.exit_code == 2 and "a port is given twice" in twice.output
    bad = run("submit", "nb", "--port", "70000", "--", "x")
    assert bad.exit_code == 2


def test_get_and_list_show_the_ports(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/jobs", json={"jobs": [job(id=7, ports=[8888]), job("other", id=8)]})
    api.on("GET", "/jobs/team-a/train-1", json=job_detail(id=7, ports=[8888, 6006]))
    got = run("get", "train-1", "-p", "team-a")
    assert got.exit_code == 0, got.output
    assert "8888  http://127.0.0.1:8420/jobs/7/ports/8888/" in got.output
    assert "6006  http://127.0.0.1:8420/jobs/7/ports/6006/" in got.output
    listed = run("list")
    header, first, second = listed.output.splitlines()[:3]
    assert "PORTS" in header
    assert first.split()[-1] == "8888" and second.split()[-1] == "-"


def test_a_terminal_without_a_size_gets_24_by_80() -> None:
    """Some pseudo-terminals never set a size (0 x 0); readline there shows no prompt."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    from corral.cli.interactive import terminal_size

    parent, child = pty.openpty()
    try:
        assert terminal_size(child) == (24, 80)  # a new pty says 0 x 0
        fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        assert terminal_size(child) == (40, 120)
    finally:
        os.close(parent)
        os.close(child)
