"""A real Corral cluster of processes on 127.0.0.1 for end-to-end tests and benchmarks.

`LocalCluster` starts ``python -m corral server`` and any number of
``python -m corral agent --simulate-gpus …`` processes, each with its own state
directory under one temporary CORRAL_HOME, and drives them through the real ``corral``
CLI (a subprocess per command, as a user would). Every process it starts is stopped by
PID in ``stop()``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class LocalCluster:
    def __init__(
        self, root: Path, port: int | None = None, server_args: tuple[str, ...] = ()
    ) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.data_dir = root / "server"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server_args = server_args
        self.server: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.admin_token = ""
        self.join_token = ""

    # ------------------------------------------------------------ processes

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        env["CORRAL_HOME"] = str(self.home)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = (self.root / log_name).open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "corral", *args],
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def start_server(self) -> None:
        self.server = self._spawn(
            [
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *self.server_args,
            ],
            "server.log",
        )
        wait_for(self._healthy, 30, "the server to answer /health")
        self.admin_token = (self.data_dir / "admin-token").read_text().strip()
        self.join_token = (self.data_dir / "join-token").read_text().strip()

    def _healthy(self) -> bool:
        assert self.server is not None
        if self.server.poll() is not None:
            raise AssertionError(f"server exited early:\n{self.log('server.log')}")
        try:
            return httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start_agent(self, name: str, gpus: str = "4xA100-80GB", *extra: str) -> None:
        args = [
            "agent",
            "--server",
            self.url,
            "--join-token",
            self.join_token,
            "--name",
            name,
            "--state-dir",
            str(self.root / "agents" / name),
            "--simulate-gpus",
            gpus,
            "--grace-period",
            "10s",
            *extra,
        ]
        if "--docker-host" not in extra:
            # Never the machine's own Docker engine: a test that wants containers
            # passes its private engine's --docker-host.
            args.append("--no-docker")
        if os.geteuid() == 0:
            # Tests run as root on CI; jobs need an account to run as.
            args += ["--user-map", "*=root", "--allow-root-jobs"]
        self.agents[name] = self._spawn(args, f"agent-{name}.log")
        wait_for(lambda: self.node_state(name) == "ready", 30, f"node {name} to be ready")

    def kill_server(self) -> None:
        """SIGKILL the server: no clean shutdown, as in a crash or OOM kill."""
        assert self.server is not None
        self.server.send_signal(signal.SIGKILL)
        self.server.wait(10)

    def stop(self) -> None:
        procs = [p for p in [self.server, *self.agents.values()] if p is not None]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self._kill_jobs()

    def _kill_jobs(self) -> None:
        """Kill job process groups left behind (agents leave jobs running on purpose)."""
        for meta in (self.root / "agents").glob("*/jobs/*/meta.json"):
            try:
                pgid = int(json.loads(meta.read_text()).get("pgid", 0))
                if pgid > 1:
                    os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, ValueError, OSError):
                pass

    def log(self, name: str) -> str:
        path = self.root / name
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    # ------------------------------------------------------------ the CLI

    def cli(
        self, *args: str, check: bool = True, token: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        env = self._env()
        env["CORRAL_SERVER"] = self.url
        env["CORRAL_TOKEN"] = token or self.admin_token
        r = subprocess.run(
            [sys.executable, "-m", "corral", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"corral {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
            )
        return r

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "-o", "json").stdout)

    # ------------------------------------------------------------ the API (fast polls)

    def api(self, path: str, **params: Any) -> Any:
        r = httpx.get(
            f"{self.url}/api/v1{path}",
            params=params,
            timeout=10,
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        r.raise_for_status()
        return r.json()

    def job(self, name: str, project: str = "default") -> Any:
        return self.api(f"/jobs/{project}/{name}")

    def node_state(self, name: str) -> str | None:
        try:
            return str(self.api(f"/nodes/{name}")["state"])
        except httpx.HTTPError:
            return None

    def wait_job(
        self, name: str, states: set[str], timeout: float = 30, project: str = "default"
    ) -> Any:
        def done() -> Any:
            job = self.job(name, project)
            return job if job["state"] in states else None

        return wait_for(done, timeout, f"job {name} to reach {sorted(states)}")
