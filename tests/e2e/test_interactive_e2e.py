"""End to end: terminals and ports of jobs, through a real server and agent on
127.0.0.1, driven with the `corral` CLI on a real pseudo-terminal (`PtySession`)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from support.cluster import LocalCluster, free_port, wait_for
from support.pty_session import PtySession

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("interactive"))
    try:
        c.start_server()
        c.start_agent("n1", "1xA100-80GB")
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def dev(cluster: LocalCluster) -> dict[str, Any]:
    """An interactive job with no command (it just waits), running."""
    out = cluster.cli("submit", "dev", "--interactive", "--env", "GREETING=hello").stdout
    assert "corral bash dev" in out
    job: dict[str, Any] = cluster.wait_job("dev", {"running"})
    return job


@pytest.fixture(scope="module")
def bob(cluster: LocalCluster) -> str:
    """A second user, member of the job's project, with an API token."""
    headers = {"Authorization": f"Bearer {cluster.admin_token}"}
    api = f"{cluster.url}/api/v1"
    assert httpx.post(f"{api}/users", json={"name": "bob"}, headers=headers).status_code == 201
    member = httpx.post(f"{api}/projects/default/members", json={"user": "bob"}, headers=headers)
    assert member.status_code == 200
    r = httpx.post(f"{api}/users/bob/tokens", json={}, headers=headers)
    assert r.status_code == 201
    token: str = r.json()["token"]
    return token


def _cli_env(cluster: LocalCluster, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(
        CORRAL_HOME=str(cluster.home),
        CORRAL_SERVER=cluster.url,
        CORRAL_TOKEN=token or cluster.admin_token,
        TERM="xterm",
    )
    return env


PROMPT = r"[#$] (?:\x1b\[[0-9;?]*[A-Za-z])*$"  # and any escape codes a line editor adds


def _corral(cluster: LocalCluster, *args: str, token: str | None = None) -> PtySession:
    return PtySession([sys.executable, "-m", "corral", *args], _cli_env(cluster, token))


def test_bash_is_a_real_terminal_in_the_job(cluster: LocalCluster, dev: dict[str, Any]) -> None:
    with _corral(cluster, "bash", "dev") as term:
        term.expect(PROMPT)  # type once the shell is there, as a person would
        # A command runs in the job's environment, and its output comes back.
        term.send(b'echo "job=$CORRAL_JOB_NAME greeting=$GREETING sum=$((6*7))"\r')
        term.expect(r"job=dev greeting=hello sum=42")
        term.send(b"tty\r")
        term.expect(r"/dev/pts/\d+")
        # The window size follows the local terminal's, before and after a resize.
        term.send(b"stty size\r")
        term.expect(r"\b24 80\b")
        term.resize(40, 120)

        def resized() -> bool:
            term.send(b"stty size\r")
            try:
                term.expect(r"\b\d+ \d+\r?\n", timeout=2)
            except AssertionError:
                return False
            return b"40 120" in term.screen[-200:]

        wait_for(resized, 20, "stty size to report the new window size")
        # Ctrl-C interrupts what runs in the foreground, not the session.
        # The marker comes from the foreground program itself, so it is printed only
        # once the shell has handed it the terminal: a Ctrl-C typed earlier would reach
        # the shell, not the program (bash's own race, at a terminal too).
        term.send(b"sh -c 'echo sleeping-$((3*3)); exec sleep 60'; echo slept\r")
        term.expect(r"sleeping-9")
        interrupted_at = time.monotonic()
        term.send(b"\x03")
        term.send(b'echo "after=$?"\r')
        term.expect(r"after=130")
        assert time.monotonic() - interrupted_at < 30
        assert not re.search(rb"\nslept\r", term.screen)  # the rest of the line was not run
        # Leaving the shell ends the command, with the shell's exit status.
        term.send(b"exit 7\r")
        assert term.wait() == 7
    job = cluster.job("dev")
    assert job["state"] == "running"  # the job goes on
    events = [e for e in job["events"] if e["type"] == "session"]
    assert events and events[-1]["actor"] == "admin"


def test_exec_runs_a_command_on_a_terminal_and_returns_its_code(
    cluster: LocalCluster, dev: dict[str, Any]
) -> None:
    with _corral(cluster, "exec", "dev", "--", "sh", "-c", "tty; stty size; exit 5") as term:
        term.expect(r"/dev/pts/\d+")
        term.expect(r"24 80")
        assert term.wait() == 5


def test_exec_without_a_terminal_uses_pipes(cluster: LocalCluster, dev: dict[str, Any]) -> None:
    script = "cat; echo to-stderr >&2; test -t 0 || echo no-tty; exit 4"
    r = subprocess.run(
        [sys.executable, "-m", "corral", "exec", "dev", "--", "sh", "-c", script],
        input="piped input\n",
        env=_cli_env(cluster),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 4, r.stderr
    assert r.stdout == "piped input\nno-tty\n"
    assert r.stderr == "to-stderr\n"
    missing = cluster.cli("exec", "dev", "--", "no-such-command-here", check=False)
    assert missing.returncode == 127
    assert "cannot run no-such-command-here: no such file or command" in missing.stderr


def test_another_user_cannot_open_a_shell_in_the_job(
    cluster: LocalCluster, dev: dict[str, Any], bob: str
) -> None:
    r = cluster.cli("bash", "dev", "-p", "default", token=bob, check=False)
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == (
        "error: only the owner of job dev (admin) and admins may open a terminal in it; you are bob"
    )
    r = cluster.cli("exec", "dev", "-p", "default", "--", "id", token=bob, check=False)
    assert r.returncode == 1 and "only the owner of job dev (admin)" in r.stderr
    r = cluster.cli("port-forward", "dev", "-p", "default", "8000", token=bob, check=False)
    assert r.returncode == 1 and "may forward a port in it; you are bob" in r.stderr


WS_ECHO = """
import sys
from websockets.sync.server import serve
def echo(ws):
    for message in ws:
        ws.send(message)
with serve(echo, "127.0.0.1", int(sys.argv[1]), compression=None) as server:
    server.serve_forever()
"""


@pytest.fixture(scope="module")
def web(cluster: LocalCluster) -> Iterator[dict[str, Any]]:
    """A job serving HTTP (python -m http.server) and a WebSocket echo on two ports."""
    http_port, ws_port = free_port(), free_port()
    # The job sees full paths (/jobs/ID/ports/PORT/...): serve files from a tree that
    # has them, as an application told its base URL would.
    python = shlex.quote(sys.executable)
    script = (
        f'd="www/jobs/$CORRAL_JOB_ID/ports/{http_port}"; mkdir -p "$d"\n'
        f'echo "hello from job $CORRAL_JOB_NAME" > "$d/index.html"; echo top > www/index.html\n'
        f"{python} -c {shlex.quote(WS_ECHO)} {ws_port} &\n"
        f"cd www && exec {python} -m http.server {http_port} --bind 127.0.0.1"
    )
    out = cluster.cli(
        "submit", "web", "--port", str(http_port), "--port", str(ws_port), "--", "sh", "-c", script
    ).stdout
    job = cluster.wait_job("web", {"running"})
    assert f"Port {http_port}: {cluster.url}/jobs/{job['id']}/ports/{http_port}/" in out
    yield {"job": job, "http": http_port, "ws": ws_port}


def _admin(cluster: LocalCluster) -> dict[str, str]:
    return {"Authorization": f"Bearer {cluster.admin_token}"}


def test_a_port_is_served_at_its_url_to_token_holders(
    cluster: LocalCluster, web: dict[str, Any], bob: str
) -> None:
    job, port = web["job"], web["http"]
    url = f"{cluster.url}/jobs/{job['id']}/ports/{port}/"

    def page() -> httpx.Response | None:
        r = httpx.get(url, headers=_admin(cluster), timeout=20)
        return r if r.status_code == 200 else None

    r = wait_for(page, 30, "the job's web server to answer through the server")
    assert r.text == "hello from job web\n"
    # The dashboard's session cookie is as good as the token.
    cookie = httpx.get(url, cookies={"corral_session": cluster.admin_token}, timeout=20)
    assert cookie.status_code == 200 and cookie.text == r.text
    no_token = httpx.get(url, timeout=20)
    assert no_token.status_code == 401
    assert no_token.json()["error"]["code"] == "unauthorized"
    assert httpx.get(url, headers={"Authorization": "Bearer crl_wrong"}).status_code == 401
    other = httpx.get(url, headers={"Authorization": f"Bearer {bob}"}, timeout=20)
    assert other.status_code == 403
    # corral get and corral list show the port and its URL.
    assert f"{port}  {url}" in cluster.cli("get", "web").stdout
    listing = cluster.cli("list").stdout
    assert "PORTS" in listing and f"{port},{web['ws']}" in listing


def test_a_page_shown_to_anyone_but_its_owner_is_sandboxed(cluster: LocalCluster, bob: str) -> None:
    """A job's page shares the dashboard's origin: shown to an admin, it must not be
    able to use the admin's session (an opaque-origin sandbox); its owner sees it as is."""
    port = free_port()
    python = shlex.quote(sys.executable)
    cluster.cli(
        "submit", "bobs-page", "--port", str(port), "--", "sh", "-c",
        f'd="www/jobs/$CORRAL_JOB_ID/ports/{port}"; mkdir -p "$d"; '
        f"echo \"bob's page\" > \"$d/index.html\"; "
        f"cd www && exec {python} -m http.server {port} --bind 127.0.0.1",
        token=bob,
    )  # fmt: skip
    job = cluster.wait_job("bobs-page", {"running"})
    url = f"{cluster.url}/jobs/{job['id']}/ports/{port}/"

    def as_owner() -> httpx.Response | None:
        r = httpx.get(url, headers={"Authorization": f"Bearer {bob}"}, timeout=20)
        return r if r.status_code == 200 else None

    owner = wait_for(as_owner, 30, "the job's web server to answer through the server")
    assert owner.text == "bob's page\n"
    assert "content-security-policy" not in owner.headers
    admin = httpx.get(url, headers=_admin(cluster), timeout=20)
    assert admin.status_code == 200
    policy = admin.headers["content-security-policy"]
    assert policy.startswith("sandbox ") and "allow-same-origin" not in policy
    cluster.cli("delete", "bobs-page")


def test_a_websocket_is_served_at_its_port_url(cluster: LocalCluster, web: dict[str, Any]) -> None:
    job, port = web["job"], web["ws"]
    url = f"ws://127.0.0.1:{cluster.port}/jobs/{job['id']}/ports/{port}/echo"

    def echoed() -> bool:
        try:
            with connect(url, additional_headers=_admin(cluster), open_timeout=20) as ws:
                ws.send("ping")
                assert ws.recv(timeout=20) == "ping"
                ws.send(b"\x00binary")
                assert ws.recv(timeout=20) == b"\x00binary"
                return True
        except Exception:
            return False

    wait_for(echoed, 30, "the job's WebSocket echo through the server")


def test_port_forward_forwards_local_connections(
    cluster: LocalCluster, web: dict[str, Any]
) -> None:
    job, port = web["job"], web["http"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral", "port-forward", "web", f"0:{port}"],
        env=_cli_env(cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.match(r"Forwarding 127\.0\.0\.1:(\d+) -> port (\d+) of job web", line)
        assert match, line + (proc.stderr.read() if proc.poll() is not None else "")
        local = int(match.group(1))
        base = f"http://127.0.0.1:{local}"

        def fetched() -> httpx.Response | None:
            r = httpx.get(f"{base}/jobs/{job['id']}/ports/{port}/", timeout=20)
            return r if r.status_code == 200 else None

        assert wait_for(fetched, 30, "a page through port-forward").text == "hello from job web\n"
        # Several connections, one after the other and at once.
        for _ in range(3):
            assert httpx.get(f"{base}/", timeout=20).text == "top\n"
    finally:
        proc.send_signal(2)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
