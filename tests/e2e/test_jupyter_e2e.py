"""End to end: a real Jupyter server in a job, behind the job's port URL.

Started with the base URL docs/interactive.md documents, it answers its REST API and
runs code in a Python kernel over the kernel's WebSocket, all through the Corral server
(which needs its own token; Jupyter's token travels in the query, as Jupyter allows).
Jupyter comes from its own virtual environment (scripts/test-services.sh installs it
there); without it the test is skipped, loudly.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.cluster import LocalCluster, free_port, wait_for

pytestmark = pytest.mark.e2e

VENV = Path(os.environ.get("CORRAL_TEST_JUPYTER_VENV") or "/opt/corral-test/jupyter")
JUPYTER_TOKEN = "jt-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def jupyter() -> Path:
    server = VENV / "bin" / "jupyter-server"
    if not server.exists():
        pytest.skip(
            f"Jupyter NOT available: no {server}, so Jupyter behind a port URL is UNTESTED. "
            "Fix: run scripts/test-services.sh (it pip-installs jupyter_server and ipykernel "
            f"into {VENV})"
        )
    return server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, jupyter: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("jupyter"))
    try:
        c.start_server()
        c.start_agent("nb-1", "1xA100-80GB")
        yield c
    finally:
        c.stop()


def test_jupyter_runs_code_through_its_port_url(cluster: LocalCluster, jupyter: Path) -> None:
    from websockets.sync.client import connect

    port = free_port()
    command = (
        f"exec {jupyter} --ip=127.0.0.1 --port={port} --no-browser --allow-root "
        f"--IdentityProvider.token={JUPYTER_TOKEN} "
        f"--ServerApp.base_url=/jobs/$CORRAL_JOB_ID/ports/{port}/"
    )
    cluster.cli("submit", "nb", "--interactive", "--port", str(port), "--", "sh", "-c", command)
    job = cluster.wait_job("nb", {"running"})
    base = f"{cluster.url}/jobs/{job['id']}/ports/{port}"
    ours = {"Authorization": f"Bearer {cluster.admin_token}"}
    query = {"token": JUPYTER_TOKEN}

    def status() -> httpx.Response | None:
        r = httpx.get(f"{base}/api/status", params=query, headers=ours, timeout=10)
        return r if r.status_code == 200 else None

    assert "started" in wait_for(status, 90, "Jupyter to answer at its port URL").json()
    assert httpx.get(f"{base}/api/status", params=query, timeout=10).status_code == 401
    kernel = httpx.post(
        f"{base}/api/kernels", params=query, headers=ours, json={"name": "python3"}, timeout=60
    )
    assert kernel.status_code == 201, kernel.text
    channels = (
        f"ws://127.0.0.1:{cluster.port}/jobs/{job['id']}/ports/{port}"
        f"/api/kernels/{kernel.json()['id']}/channels?token={JUPYTER_TOKEN}"
    )
    msg_id = uuid.uuid4().hex
    request = {
        "header": {
            "msg_id": msg_id,
            "username": "test",
            "session": uuid.uuid4().hex,
            "msg_type": "execute_request",
            "version": "5.3",
            "date": "",
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": "import os; print(6 * 7, os.environ['CORRAL_JOB_NAME'])",
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
        "channel": "shell",
        "buffers": [],
    }
    said = None
    with connect(channels, additional_headers=ours, open_timeout=30) as ws:
        ws.send(json.dumps(request))
        deadline = time.monotonic() + 60
        while said is None and time.monotonic() < deadline:
            message = json.loads(ws.recv(timeout=30))
            if message.get("msg_type") == "stream" and (
                message["parent_header"].get("msg_id") == msg_id
            ):
                said = message["content"]["text"]
    assert said == "42 nb\n"
    cluster.cli("delete", "nb")
