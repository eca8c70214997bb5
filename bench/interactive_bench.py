"""Interactive sessions: how a terminal and a port URL feel through the relay.

**What runs.** A real ``corral server`` and one real ``corral agent --simulate-gpus
1xA100-80GB`` on 127.0.0.1 (`LocalCluster` from ``tests/support/cluster.py``, as the
end-to-end tests start them). One job runs ``python -m http.server`` on an exposed
port, serving a 1 KiB file and a ``BIG_MIB`` MiB file.

**Measurements.**

- *Keystroke echo*: a terminal session (``/api/v1/jobs/.../terminal``, the WebSocket
  `corral bash` opens) runs ``cat`` on a PTY; one byte is sent ``KEYSTROKES`` times,
  each time waiting for its echo: the round trip user → server → agent → PTY → agent →
  server → user. Median and p95. Target: p95 ≤ 50 ms (typing feels immediate).
- *Opening a terminal*: from the WebSocket's connect to the first output byte of the
  shell (the server offers the session, the agent's poll collects it, the agent dials
  back and starts the PTY). Median of ``OPENS``. Target: ≤ 1 s.
- *Port URL request*: ``GET`` of the 1 KiB file at the job's port URL, each request a
  new session through the agent, ``REQUESTS`` times. Median and p95. Target: p95 ≤
  250 ms.
- *Port URL throughput*: the ``BIG_MIB`` MiB file through the port URL, MiB/s, best of
  three. Target: ≥ 20 MiB/s (a notebook's plots and files load without waiting).

All four share this 2-core machine with the server, the agent and the job. Run:
``.venv/bin/python -m bench interactive``; results in
``bench/results/interactive.json``.
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from corral.core import tunnel as wire  # noqa: E402
from support.cluster import LocalCluster, free_port, wait_for  # noqa: E402

KEYSTROKES = 200
OPENS = 10
REQUESTS = 50
BIG_MIB = 64
TARGET_ECHO_P95_MS = 50.0
TARGET_OPEN_MS = 1000.0
TARGET_REQUEST_P95_MS = 250.0
TARGET_MIB_PER_S = 20.0


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _terminal(cluster: LocalCluster, command: list[str]) -> Any:
    from websockets.sync.client import connect

    url = wire.websocket_url(cluster.url, "/api/v1/jobs/default/web/terminal")
    ws = connect(
        url,
        additional_headers={"Authorization": f"Bearer {cluster.admin_token}"},
        compression=None,
        max_size=None,
        open_timeout=30,
    )
    ws.send(wire.TerminalStart(command=command, tty=True).model_dump_json())
    return ws


def _read_until(ws: Any, wanted: bytes, timeout: float = 10) -> None:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        message = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(message, bytes):
            seen += message[1:]
        elif json.loads(message).get("type") in ("exit", "error"):
            raise RuntimeError(f"terminal ended: {message}")


def measure_echo(cluster: LocalCluster) -> list[float]:
    ws = _terminal(cluster, ["sh", "-c", "stty raw -echo; echo ready; exec cat"])
    try:
        _read_until(ws, b"ready")
        times = []
        for i in range(KEYSTROKES):
            key = bytes([ord("a") + i % 26])
            started = time.perf_counter()
            ws.send(wire.data_message(wire.STDIN, key))
            _read_until(ws, key)
            times.append((time.perf_counter() - started) * 1000)
        return times
    finally:
        ws.close()


def measure_open(cluster: LocalCluster) -> list[float]:
    times = []
    for _ in range(OPENS):
        started = time.perf_counter()
        ws = _terminal(cluster, ["sh", "-c", "echo up"])
        try:
            _read_until(ws, b"up")
            times.append((time.perf_counter() - started) * 1000)
        finally:
            ws.close()
    return times


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="corral-bench-interactive-") as tmp:
        cluster = LocalCluster(Path(tmp))
        try:
            cluster.start_server()
            cluster.start_agent("bench-1", "1xA100-80GB")
            port = free_port()
            python = shlex.quote(sys.executable)
            script = (
                f'd="www/jobs/$CORRAL_JOB_ID/ports/{port}"; mkdir -p "$d"; '
                f'head -c 1024 /dev/zero > "$d/small"; '
                f'head -c {BIG_MIB * 1024 * 1024} /dev/urandom > "$d/big"; '
                f"cd www && exec {python} -m http.server {port} --bind 127.0.0.1"
            )
            cluster.cli("submit", "web", "--port", str(port), "--", "sh", "-c", script)
            job = cluster.wait_job("web", {"running"})
            base = f"{cluster.url}/jobs/{job['id']}/ports/{port}"
            headers = {"Authorization": f"Bearer {cluster.admin_token}"}
            with httpx.Client(headers=headers, timeout=60) as http:

                def small() -> bool:
                    return http.get(f"{base}/small").status_code == 200

                wait_for(small, 60, "the job's web server at its port URL")
                for _ in range(5):
                    http.get(f"{base}/small")
                requests = []
                for _ in range(REQUESTS):
                    started = time.perf_counter()
                    r = http.get(f"{base}/small")
                    requests.append((time.perf_counter() - started) * 1000)
                    assert r.status_code == 200 and len(r.content) == 1024
                rates = []
                for _ in range(3):
                    started = time.perf_counter()
                    r = http.get(f"{base}/big")
                    took = time.perf_counter() - started
                    assert r.status_code == 200 and len(r.content) == BIG_MIB * 1024 * 1024
                    rates.append(BIG_MIB / took)
            opens = measure_open(cluster)
            echoes = measure_echo(cluster)
        finally:
            cluster.stop()
    figures = {
        "keystroke_echo_ms": {
            "median": round(statistics.median(echoes), 2),
            "p95": round(_p95(echoes), 2),
            "count": len(echoes),
            "target_p95": TARGET_ECHO_P95_MS,
        },
        "terminal_open_ms": {
            "median": round(statistics.median(opens), 1),
            "max": round(max(opens), 1),
            "count": len(opens),
            "target_median": TARGET_OPEN_MS,
        },
        "port_request_ms": {
            "median": round(statistics.median(requests), 2),
            "p95": round(_p95(requests), 2),
            "count": len(requests),
            "target_p95": TARGET_REQUEST_P95_MS,
        },
        "port_throughput_mib_s": {
            "best": round(max(rates), 1),
            "all": [round(r, 1) for r in rates],
            "file_mib": BIG_MIB,
            "target": TARGET_MIB_PER_S,
        },
    }
    passed = (
        figures["keystroke_echo_ms"]["p95"] <= TARGET_ECHO_P95_MS
        and figures["terminal_open_ms"]["median"] <= TARGET_OPEN_MS
        and figures["port_request_ms"]["p95"] <= TARGET_REQUEST_P95_MS
        and figures["port_throughput_mib_s"]["best"] >= TARGET_MIB_PER_S
    )
    for name, values in figures.items():
        print(f"  {name}: {values}")
    return {**figures, "passed": passed}
