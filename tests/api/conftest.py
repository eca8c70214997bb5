"""An in-process server on a real database (SQLite and PostgreSQL), no sockets.

Background loops are off: tests run scheduler cycles and liveness checks themselves,
with a fake clock, so every step is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.core.clock import FakeClock
from corral.server.app import create_app
from corral.server.context import ServerContext
from corral.server.loops.cycles import NodeHealthLoop, SchedulerLoop
from corral.server.services.bootstrap import bootstrap
from corral.server.settings import ServerSettings
from corral.store.migrate import upgrade

API = "/api/v1"


def gpu_list(n: int, node: str = "n", memory_gib: int = 80) -> list[dict[str, Any]]:
    return [
        {
            "index": i,
            "uuid": f"GPU-{node}-{i}",
            "model": "NVIDIA A100-SXM4-80GB",
            "memory_bytes": memory_gib << 30,
            "simulated": True,
        }
        for i in range(n)
    ]


@dataclass
class Harness:
    ctx: ServerContext
    http: TestClient
    clock: FakeClock
    admin: str
    join: str

    def h(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str, token: str | None = None, **params: Any) -> Any:
        r = self.http.get(API + path, headers=self.h(token or self.admin), params=params)
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, path: str, body: Any, token: str | None = None) -> Any:
        return self.http.post(API + path, headers=self.h(token or self.admin), json=body)

    def submit(self, name: str, token: str | None = None, **fields: Any) -> Any:
        body = {"name": name, "command": ["true"], **fields}
        return self.post("/jobs", body, token)

    def job(self, name: str, project: str = "default") -> Any:
        return self.get(f"/jobs/{project}/{name}")

    def register(self, name: str, gpus: int | list[dict[str, Any]] = 8, **extra: Any) -> str:
        """Register node ``name`` with ``gpus`` GPUs (a count, or the GPUs themselves)."""
        body = {
            "name": name,
            "hostname": name,
            "cpu_cores": 32,
            "memory_bytes": 256 << 30,
            "gpus": gpu_list(gpus, name) if isinstance(gpus, int) else gpus,
            "simulated": True,
            "gpu_backend": "simulated",
            **extra,
        }
        r = self.post("/agent/register", body, self.join)
        assert r.status_code == 200, r.text
        token: str = r.json()["node_token"]
        return token

    def sync(
        self, node_token: str, reports: list[dict[str, Any]] | None = None, seen: int = 0
    ) -> Any:
        r = self.post(
            "/agent/sync", {"generation_seen": seen, "reports": reports or []}, node_token
        )
        assert r.status_code == 200, r.text
        return r.json()

    def cycle(self) -> None:
        SchedulerLoop(self.ctx).cycle()

    def check_health(self) -> None:
        NodeHealthLoop(self.ctx).check()

    def make_user(self, name: str, projects: tuple[str, ...] = ("default",)) -> str:
        assert self.post("/users", {"name": name}).status_code == 201
        for p in projects:
            assert self.post(f"/projects/{p}/members", {"user": name}).status_code == 200
        r = self.post(f"/users/{name}/tokens", {"description": "test"})
        assert r.status_code == 201
        token: str = r.json()["token"]
        return token

    def count_jobs(self) -> int:
        return len(self.get("/jobs", all=True)["jobs"])


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[Harness]:
    clock = FakeClock()
    settings = ServerSettings(
        data_dir=tmp_path / "server",
        database_url=database_url,
        node_not_ready_after=15,
        node_down_after=60,
    )
    ctx = ServerContext.create(settings, clock=clock)
    upgrade(database_url)
    boot = bootstrap(ctx)
    assert boot.admin_token and boot.join_token
    app = create_app(ctx, run_loops=False)
    with TestClient(app) as http:
        yield Harness(ctx, http, clock, boot.admin_token, boot.join_token)
    ctx.dispose()
