"""The demo cluster of ``corral demo``, as real processes on 127.0.0.1.

A ``corral server`` and three ``corral agent --simulate-gpus`` processes (2 nodes x
8 A100-80GB, 1 node x 4 RTX 4090: 20 simulated GPUs), then the demo's workload
(`corral.cli.demo_workload.run_workload`: projects team-a/b/c, users alice and bob,
fifteen jobs that are real ``sh`` loops on this machine), through the API with
`corral.client.ApiClient`, as ``corral demo`` does it.

Used by the browser tests' fixture (``tests/browser/conftest.py``) and by
``scripts/screenshots.py``. Every process is started by `support.cluster.LocalCluster`
and stopped by PID in `DemoCluster.stop` (the jobs' process groups too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.cli.demo import DEMO_NODES
from corral.cli.demo_workload import run_workload
from corral.client import ApiClient
from support.cluster import LocalCluster

# What the demo cluster has, for the tests' expectations.
GPUS_TOTAL = sum(int(profile.split("x", 1)[0]) for _, profile in DEMO_NODES)
NODE_NAMES = tuple(name for name, _ in DEMO_NODES)


@dataclass
class DemoCluster:
    cluster: LocalCluster
    tokens: dict[str, str]  # user -> API token (alice, bob), written by run_workload

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def admin_token(self) -> str:
        return self.cluster.admin_token

    def api(self, path: str, token: str | None = None, **params: Any) -> Any:
        """GET /api/v1{path} as the admin (or as the user of ``token``)."""
        with ApiClient(self.url, token or self.admin_token, timeout=10) as client:
            return client.get(path, **params)

    def api_text(self, path: str, token: str | None = None, **params: Any) -> str:
        """GET /api/v1{path} as text (a job's logs), as the admin or ``token``'s user."""
        with (
            ApiClient(self.url, token or self.admin_token, timeout=10) as client,
            client.stream(path, params=params) as chunks,
        ):
            return b"".join(chunks).decode("utf-8", errors="replace")

    def stop(self) -> None:
        self.cluster.stop()


def start_demo(root: Path, echo: bool = False) -> DemoCluster:
    """Start the server, the three agents and the workload; the caller must `stop()`."""
    cluster = LocalCluster(root)
    try:
        cluster.start_server()
        for name, profile in DEMO_NODES:
            cluster.start_agent(name, profile)
        with ApiClient(cluster.url, cluster.admin_token) as admin:
            token_files = run_workload(
                admin,
                lambda token: ApiClient(cluster.url, token),
                token_dir=root,
                echo=print if echo else (lambda _line: None),
            )
        tokens = {user: path.read_text().strip() for user, path in token_files.items()}
    except BaseException:
        cluster.stop()
        raise
    return DemoCluster(cluster=cluster, tokens=tokens)
