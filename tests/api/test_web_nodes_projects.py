"""The dashboard's nodes table, node page and projects page (server side).

(The pages in a real browser are tested in tests/browser.)
"""

from __future__ import annotations

import html as htmllib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event

from api.conftest import Harness, gpu_list
from corral.server.loops.cycles import UsageHistoryLoop

GiB = 1024**3


def login(server: Harness, token: str) -> None:
    r = server.http.post("/login", data={"token": token, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text


def push(server: Harness, node_token: str, gpus: list[dict[str, Any]], **host: Any) -> None:
    sample = {
        "at": server.clock.now().isoformat(),
        "gpus": gpus,
        "host": {"cpu_percent": 40.0, **host},
    }
    r = server.post("/agent/metrics", {"samples": [sample]}, node_token)
    assert r.status_code == 204, r.text


def gpu(index: int, node: str, util: float | None = 50.0, **fields: Any) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": f"GPU-{node}-{index}",
        "utilization_percent": util,
        "memory_used_bytes": 10 * GiB,
        "memory_total_bytes": 80 * GiB,
        **fields,
    }


def row(html: str, testid: str, key: str, value: str) -> str:
    """The HTML of the table row ``data-testid=testid`` with ``data-key=value``."""
    pattern = rf'<tr[^>]*data-testid="{testid}" data-{key}="{re.escape(value)}".*?</tr>'
    m = re.search(pattern, html, re.S)
    assert m, f"no {testid} row for {value}"
    return m.group(0)


def cell(html: str, testid: str) -> str:
    """The text of the (first) element ``data-testid=testid``, tags stripped."""
    m = re.search(rf'<(\w+)[^>]*data-testid="{testid}"[^>]*>(.*?)</\1>', html, re.S)
    assert m, f"no {testid}"
    text = re.sub(r"<[^>]+>", " ", m.group(2))
    return " ".join(htmllib.unescape(text).split())


def stranger(pid: int, user: str) -> dict[str, Any]:
    return {"pid": pid, "used_memory_bytes": GiB, "owner": "user", "user": user,
            "command": "python"}  # fmt: skip


# ------------------------------------------------------------------ the nodes table


def test_the_nodes_table_counts_gpus_by_use_and_shows_the_newest_sample(server: Harness) -> None:
    n1 = server.register("n1", gpus=4)
    push(
        server,
        n1,
        [
            gpu(0, "n1", util=10.0),
            gpu(1, "n1", util=20.0),
            gpu(2, "n1", util=30.0, processes=[stranger(4242, "bob")]),
            gpu(3, "n1", util=40.0),
        ],
        memory_used_bytes=64 * GiB,
        memory_total_bytes=256 * GiB,
    )
    assert server.submit("two", gpus=2).status_code == 201
    server.cycle()
    server.register("n2", gpus=2)  # no sample yet: its numbers are n/a, never 0
    alice = server.make_user("alice")
    login(server, alice)  # any signed-in user sees the nodes

    page = server.http.get("/nodes")
    assert page.status_code == 200
    r1 = row(page.text, "node-row", "node", "n1")
    assert 'href="/nodes/n1"' in r1
    assert cell(r1, "node-state") == "ready"
    assert cell(r1, "node-gpus") == "4 \u00d7 NVIDIA A100-SXM4-80GB"
    assert cell(r1, "node-allocated") == "2"
    assert cell(r1, "node-free") == "1"
    assert cell(r1, "node-unmanaged") == "1"
    assert cell(r1, "node-util") == "25%"
    assert cell(r1, "node-cpu") == "40%"
    assert cell(r1, "node-ram") == "64GiB / 256GiB"
    assert "SIMULATED" in r1
    r2 = row(page.text, "node-row", "node", "n2")
    assert cell(r2, "node-util") == "n/a"
    assert cell(r2, "node-cpu") == "n/a"
    assert cell(r2, "node-ram") == "n/a / n/a"
    assert cell(r2, "node-free") == "2"

    fragment = server.http.get("/fragments/nodes", headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert cell(row(fragment.text, "node-row", "node", "n1"), "node-allocated") == "2"
    assert 'hx-get="/fragments/nodes" hx-trigger="every 10s"' in page.text


def test_a_late_node_shows_its_reason_and_heartbeat_age(server: Harness) -> None:
    server.register("n1", gpus=1)
    server.clock.advance(20)  # past node_not_ready_after (15 s)
    server.check_health()
    login(server, server.admin)
    r1 = row(server.http.get("/nodes").text, "node-row", "node", "n1")
    assert cell(r1, "node-state") == "not_ready"
    assert "heartbeats late" in cell(r1, "node-reason")
    assert cell(r1, "node-heartbeat") == "last heartbeat 20s ago"
    assert cell(r1, "node-free") == "0"  # nothing is placed on a late node


def test_a_driver_other_than_most_nodes_is_flagged(server: Harness) -> None:
    for name, driver in (("a1", "550.54.15"), ("a2", "550.54.15"), ("b1", "535.129.03")):
        server.register(name, gpus=1, driver_version=driver, cuda_version="12.4")
    login(server, server.admin)
    page = server.http.get("/nodes").text
    odd = row(page, "node-row", "node", "b1")
    assert 'data-testid="drift"' in odd
    assert "differs from 550.54.15 on 2 of 3 nodes" in odd
    assert cell(odd, "node-cuda") == "12.4"  # the same everywhere: no flag
    for name in ("a1", "a2"):
        assert 'data-testid="drift"' not in row(page, "node-row", "node", name)
    assert 'data-testid="drift-note"' in page
    node = server.http.get("/nodes/b1").text
    assert "differs from 550.54.15 on 2 of 3 nodes" in cell(node, "node-driver")


def test_two_nodes_with_two_drivers_are_a_tie_not_drift(server: Harness) -> None:
    server.register("a1", gpus=1, driver_version="550.54.15")
    server.register("b1", gpus=1, driver_version="535.129.03")
    login(server, server.admin)
    assert 'data-testid="drift"' not in server.http.get("/nodes").text


@contextmanager
def count_queries() -> Iterator[list[str]]:
    seen: list[str] = []

    def _count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", _count)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", _count)


def test_the_nodes_page_reads_the_same_few_queries_for_any_number_of_nodes(
    server: Harness,
) -> None:
    server.register("n1", gpus=8)
    login(server, server.admin)
    server.http.get("/nodes")
    with count_queries() as few:
        assert server.http.get("/nodes").status_code == 200
    for i in range(2, 8):
        server.register(f"n{i}", gpus=8)
        server.submit(f"j{i}", gpus=3)
    server.cycle()
    with count_queries() as many:
        assert server.http.get("/nodes").status_code == 200
    assert len(many) == len(few) <= 10


# ------------------------------------------------------------------ one node


def node_with_mig() -> list[dict[str, Any]]:
    """GPU 0 in MIG mode (two 1g.10gb, one 3g.40gb), GPUs 1 and 2 whole."""
    gpus = gpu_list(3, "n1")
    gpus[0]["mig"] = [
        {
            "uuid": f"MIG-n1-0-{i}",
            "profile": profile,
            "gpu_instance_id": i,
            "compute_instance_id": 0,
            "compute_slices": slices,
            "memory_bytes": gib * GiB,
        }
        for i, (profile, slices, gib) in enumerate(
            [("1g.10gb", 1, 10), ("1g.10gb", 1, 10), ("3g.40gb", 3, 40)]
        )
    ]
    return gpus


def test_the_node_page_shows_holders_mig_processes_and_host(server: Harness) -> None:
    n1 = server.register("n1", gpus=node_with_mig(), driver_version="550.54.15")
    alice = server.make_user("alice")
    assert server.submit("small", alice, mig_profile="1g.10gb").status_code == 201
    assert server.submit("whole", alice, gpus=1).status_code == 201
    server.cycle()
    small, whole = server.job("small"), server.job("whole")
    assert small["gpu_uuids"] == ["MIG-n1-0-0"] and whole["state"] == "bound"
    held = whole["gpu_ids"][0]
    other = 3 - held  # the whole GPU nobody holds: bob uses it by hand
    own = {"pid": 101, "owner": "job", "job_id": whole["id"], "rank": 0, "user": "alice",
           "used_memory_bytes": 5 * GiB, "command": "python train.py"}  # fmt: skip
    in_mig = {"pid": 202, "owner": "job", "job_id": small["id"], "rank": 0, "user": "alice"}
    hot = {
        "temperature_celsius": 65.0,
        "power_watts": 250.0,
        "power_limit_watts": 400.0,
        "throttle_reasons": [],
        "ecc_corrected_errors": 0,
        "ecc_uncorrected_errors": 0,
    }
    samples = {
        0: gpu(
            0,
            "n1",
            util=None,
            mig=[
                {
                    "uuid": "MIG-n1-0-0",
                    "profile": "1g.10gb",
                    "memory_used_bytes": 3 * GiB,
                    "memory_total_bytes": 10 * GiB,
                    "processes": [in_mig],
                }
            ],
        ),
        held: gpu(held, "n1", util=90.0, processes=[own], **hot),
        other: gpu(other, "n1", util=70.0, processes=[stranger(4242, "bob")]),
    }
    push(
        server,
        n1,
        [samples[i] for i in range(3)],
        memory_used_bytes=64 * GiB,
        memory_total_bytes=256 * GiB,
        net_rx_bytes_per_s=2 * 1024**2,
        filesystems=[{"mount": "/data", "used_bytes": 95 * GiB, "total_bytes": 100 * GiB}],
        temperatures_celsius={"cpu": 55.0},
    )
    login(server, alice)
    page = server.http.get("/nodes/n1")
    assert page.status_code == 200
    html = page.text

    inventory = re.search(r'data-testid="node-inventory".*?</section>', html, re.S)
    assert inventory and "550.54.15" in inventory.group(0) and "n1" in inventory.group(0)
    assert "SIMULATED" in html

    held_row = row(html, "gpu-row", "gpu", str(held))
    assert 'href="/jobs/default/whole"' in held_row and "alice" in held_row
    assert cell(held_row, "gpu-util") == "90%"
    assert "65 °C" in held_row and "250 W / 400 W" in held_row
    other_row = row(html, "gpu-row", "gpu", str(other))
    assert 'class="unmanaged"' in other_row
    assert cell(other_row, "gpu-unmanaged") == "outside Corral: bob (pid 4242 python)"
    mig_gpu = row(html, "gpu-row", "gpu", "0")
    assert 'href="/jobs/default/small"' in mig_gpu and "mig 1g.10gb" in mig_gpu
    assert cell(mig_gpu, "gpu-util") == "n/a"  # not available stays n/a

    assert 'data-testid="mig-layout"' in html
    taken = row(html, "mig-row", "uuid", "MIG-n1-0-0")
    assert 'href="/jobs/default/small"' in taken and "3GiB / 10GiB" in taken
    free = row(html, "mig-row", "uuid", "MIG-n1-0-2")
    assert "3g.40gb" in free and "free" in free

    mine = row(html, "process-row", "pid", "101")
    assert 'href="/jobs/default/whole"' in mine and "unmanaged" not in mine
    assert "python train.py" in mine and "5GiB" in mine
    assert 'href="/jobs/default/small"' in row(html, "process-row", "pid", "202")
    bobs = row(html, "process-row", "pid", "4242")
    assert 'class="unmanaged"' in bobs and cell(bobs, "process-user") == "bob"
    assert "outside Corral" in bobs

    assert cell(html, "host-cpu") == "40%"
    assert cell(html, "host-memory") == "64GiB / 256GiB (25%)"
    assert "rx 2MiB/s" in html and "/data" in html and "cpu 55 °C" in html

    chart = (
        'data-series="/api/v1/metrics/gpus?node=n1&amp;metric=utilization_percent"'
        ' data-unit="%" data-max="100"'
    )
    assert chart in " ".join(html.split())
    for metric in ("memory_used_bytes", "temperature_celsius", "power_watts"):
        assert f"/api/v1/metrics/gpus?node=n1&amp;metric={metric}" in html
    assert "/api/v1/metrics/hosts?node=n1&amp;metric=cpu_percent" in html

    events = re.search(r'data-testid="node-events".*?</section>', html, re.S)
    assert events and "registered" in events.group(0) and "unmanaged" in events.group(0)

    fragment = server.http.get("/fragments/nodes/n1", headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert 'data-testid="gpu-table"' in fragment.text


def test_a_stale_sample_is_not_shown_as_now(server: Harness) -> None:
    n1 = server.register("n1", gpus=1)
    push(server, n1, [gpu(0, "n1", util=80.0, processes=[stranger(7, "bob")])])
    server.clock.advance(120)
    server.sync(n1)  # the node is alive, but its monitoring stopped
    login(server, server.admin)
    html = server.http.get("/nodes/n1").text
    assert 'data-testid="stale"' in html
    assert cell(row(html, "gpu-row", "gpu", "0"), "gpu-util") == "n/a"
    assert 'data-testid="process-row"' not in html
    assert cell(row(server.http.get("/nodes").text, "node-row", "node", "n1"), "node-util") == (
        "n/a"
    )


def test_an_unknown_node_is_a_404_page(server: Harness) -> None:
    login(server, server.admin)
    r = server.http.get("/nodes/nope")
    assert r.status_code == 404
    assert 'data-testid="not-found"' in r.text and "nope" in r.text
    assert server.http.get("/fragments/nodes/nope").status_code == 404


def test_the_node_pages_need_a_login(server: Harness) -> None:
    server.register("n1", gpus=1)
    for path in ("/nodes", "/nodes/n1", "/projects"):
        r = server.http.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), path


# ------------------------------------------------------------------ projects


def test_the_projects_page_shows_settings_shares_and_use(server: Harness) -> None:
    server.register("n1", gpus=4)
    assert server.post("/projects", {"name": "dept", "quota": 4}).status_code == 201
    for body in (
        {"name": "team-a", "quota": 2, "parent": "dept"},
        {"name": "team-b", "quota": 2, "weight": 3, "limit": 3, "priority": 5, "parent": "dept"},
    ):
        assert server.post("/projects", body).status_code == 201, body
    login(server, server.admin)
    before = row(server.http.get("/projects").text, "project-row", "project", "team-a")
    assert cell(before, "project-fair-share") == "n/a"  # no cycle yet

    assert server.submit("a1", gpus=2, project="team-a").status_code == 201
    assert server.submit("b1", gpus=1, project="team-b").status_code == 201
    assert server.submit("b2", gpus=4, project="team-b").status_code == 201  # does not fit
    server.cycle()
    shares = server.ctx.scheduling.shares
    page = server.http.get("/projects")
    assert page.status_code == 200
    html = page.text

    a = row(html, "project-row", "project", "team-a")
    assert 'id="team-a"' in a  # the overview links to /projects#team-a
    assert cell(a, "project-quota") == "2"
    assert cell(a, "project-weight") == "2 (= quota)"
    assert cell(a, "project-limit") == "none"
    assert cell(a, "project-pools") == "all"
    assert cell(a, "project-fair-share") == f"{shares['team-a'].fair_share:g}"
    assert cell(a, "project-allocated") == "2"
    assert cell(a, "project-running") == "1"
    assert cell(a, "project-pending") == "0"
    assert 'href="#dept"' in a

    b = row(html, "project-row", "project", "team-b")
    assert cell(b, "project-weight") == "3"
    assert cell(b, "project-limit") == "3"
    assert cell(b, "project-allocated") == "1"
    assert cell(b, "project-running") == "1"
    assert cell(b, "project-pending") == "1"
    # A department comes before the projects under it.
    assert html.index('data-project="dept"') < html.index('data-project="team-a"')

    m = re.search(r'data-testid="projects-chart"\s+data-series="([^"]+)"', html)
    assert m
    url = htmllib.unescape(m.group(1))
    assert url == "/api/v1/metrics/projects?metric=allocated_gpus"  # the last hour
    UsageHistoryLoop(server.ctx).record()
    server.clock.advance(1)
    series = server.http.get(url)  # the chart reads it with the session cookie
    assert series.status_code == 200, series.text
    projects = {s["key"]["project"]: s["points"] for s in series.json()["series"]}
    assert [v for _, v in projects["team-a"]] == [2.0]
    assert [v for _, v in projects["team-b"]] == [1.0]

    week = server.http.get("/projects", params={"period": "week"}).text
    m = re.search(r'data-testid="projects-chart"\s+data-series="([^"]+)"', week)
    assert m and "&amp;start=" in m.group(1)
    url = htmllib.unescape(m.group(1))
    assert url.startswith("/api/v1/metrics/projects?metric=allocated_gpus&start=")
    week_series = server.http.get(url).json()
    # The store is seconds old: "the last week" is the raw samples it has, not an empty
    # chart waiting for a 1-minute roll-up.
    assert week_series["resolution"] == "raw"
    points = {s["key"]["project"]: s["points"] for s in week_series["series"]}
    assert [v for _, v in points["team-a"]] == [2.0]

    fragment = server.http.get("/fragments/projects", headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert 'data-project="team-b"' in fragment.text


def test_mig_and_gang_jobs_count_as_their_share_of_gpus(server: Harness) -> None:
    server.register("n1", gpus=node_with_mig())
    server.register("n2", gpus=4)
    server.register("n3", gpus=4)
    assert server.submit("small", mig_profile="3g.40gb").status_code == 201
    assert server.submit("gang", gpus=4, workers=2).status_code == 201
    server.cycle()
    assert server.job("gang")["state"] == "bound"
    login(server, server.admin)
    d = row(server.http.get("/projects").text, "project-row", "project", "default")
    assert cell(d, "project-allocated") == f"{8 + 3 / 7:.2f}".rstrip("0")
    assert cell(d, "project-running") == "2"
