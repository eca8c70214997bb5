"""A fake Corral API for CLI tests, and factories of the API's JSON objects.

`FakeApi` answers requests from a route table (``api.on("GET", "/jobs", json=...)``),
records every request, and answers unknown routes with the API's 404 error body. It is
handed to the CLI through ``CliState(transport=api.transport)``, the hook every command
uses to make its `ApiClient`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from click.testing import Result

NOW = datetime(2025, 5, 1, 12, 0, 0, tzinfo=UTC)
SERVER = "http://corral.test:8420"
Handler = Callable[[httpx.Request], httpx.Response]
Runner = Callable[..., Result]
"""The ``run`` fixture: ``run("list", "-o", "json")`` → click's Result."""


def error(status: int, code: str, message: str, field: str | None = None) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"code": code, "message": message, "field": field}}
    )


class FakeApi:
    """Routes keyed by (method, path below /api/v1); query strings are matched separately."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[tuple[dict[str, str], Handler]]] = {}
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self._handle)

    def on(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        status: int = 200,
        handler: Handler | None = None,
        query: dict[str, str] | None = None,
    ) -> None:
        """Answer ``method path`` (and, if given, only with these query values)."""

        def answer(request: httpx.Request) -> httpx.Response:
            return httpx.Response(status, json=json)

        self.routes.setdefault((method, path), []).insert(0, (query or {}, handler or answer))

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/api/v1")
        params = dict(request.url.params)
        for query, handler in self.routes.get((request.method, path), []):
            if all(params.get(k) == v for k, v in query.items()):
                return handler(request)
        return error(404, "not_found", f"no route {request.method} {path}")

    def last(self, method: str, path: str) -> httpx.Request:
        for request in reversed(self.requests):
            if request.method == method and request.url.path == "/api/v1" + path:
                return request
        raise AssertionError(f"no {method} {path} request was made")

    def body(self, method: str, path: str) -> Any:
        return json.loads(self.last(method, path).content)


# ---------------------------------------------------------------- API object factories


def ts(ago: timedelta | None) -> str | None:
    return None if ago is None else (NOW - ago).isoformat()


def job(name: str = "train-1", project: str = "team-a", **fields: Any) -> dict[str, Any]:
    """A JobOut as the server sends it (JSON); ``fields`` override the defaults."""
    data: dict[str, Any] = {
        "id": 1,
        "name": name,
        "project": project,
        "user": "alice",
        "kind": "train",
        "state": "running",
        "node": "node-1",
        "gpus": 2.0,
        "gpu_memory_bytes": None,
        "mig_profile": None,
        "workers": 1,
        "gpu_ids": [0, 1],
        "gpu_uuids": ["GPU-aaaa", "GPU-bbbb"],
        "worker_list": [],
        "cpus": 4.0,
        "memory_bytes": 16 * 1024**3,
        "command": ["python", "train.py", "--epochs", "10"],
        "env": {"EPOCHS": "10"},
        "workdir": "/home/alice/proj",
        "grace_seconds": 30.0,
        "attempt": 1,
        "created_at": ts(timedelta(minutes=5)),
        "started_at": ts(timedelta(minutes=4)),
        "finished_at": None,
        "exit_code": None,
        "reason": None,
        "deleted": False,
        "priority": 0,
        "pool": None,
        "container": None,
        "ports": [],
    }
    data.update(fields)
    return data


def job_detail(name: str = "train-1", project: str = "team-a", **fields: Any) -> dict[str, Any]:
    data = job(name, project, **fields)
    data.setdefault("events", [])
    if "events" not in fields:
        data["events"] = [
            {"at": ts(timedelta(minutes=5)), "type": "submitted", "message": "by alice"},
            {"at": ts(timedelta(minutes=4)), "type": "running", "message": "pid 4242"},
        ]
    return data


def gpu(index: int, model: str = "A100-80GB", simulated: bool = False) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": f"GPU-{index:04d}",
        "model": model,
        "memory_bytes": 80 * 1024**3,
        "simulated": simulated,
    }


def node(
    name: str = "node-1", *, gpus: Sequence[dict[str, Any]] = (), **fields: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": name,
        "state": "ready",
        "hostname": name,
        "address": None,
        "pool": "default",
        "cpu_cores": 64,
        "memory_bytes": 512 * 1024**3,
        "gpus": len(gpus),
        "gpus_allocated": 0,
        "gpu_devices": list(gpus),
        "driver_version": "550.54.15",
        "cuda_version": "12.4",
        "simulated": False,
        "gpu_backend": "nvml",
        "agent_version": "0.1.0",
        "container_engine": None,
        "last_heartbeat": ts(timedelta(seconds=3)),
        "registered_at": ts(timedelta(days=2)),
        "jobs": [],
        "reason": None,
    }
    data.update(fields)
    return data


def project(name: str, members: Sequence[str] = (), **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": name,
        "members": list(members),
        "jobs_running": 0,
        "jobs_pending": 0,
        "gpus_allocated": 0.0,
        "quota": 0.0,
        "weight": 0.0,
        "limit": None,
        "priority": 0,
        "pools": None,
        "interactive_limit_seconds": None,
        "parent": None,
        "fair_share": None,
        "created_at": ts(timedelta(days=1)),
    }
    data.update(fields)
    return data
