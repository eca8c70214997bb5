"""The dashboard's jobs pages: the table (filters, pages, cells, a bounded number of
queries), one job's page (fields, gang workers, events) and its live log tail, and who
may read logs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from typing import Any

from sqlalchemy import Engine, event

from api.conftest import API, Harness

GiB = 1024**3


def login(server: Harness, token: str) -> None:
    r = server.http.post("/login", data={"token": token, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text


class _Rows(HTMLParser):
    """Each `job-row` (or `worker-row`) as {cell testid: text}, in order."""

    def __init__(self, row_testid: str) -> None:
        super().__init__()
        self.row_testid = row_testid
        self.rows: list[dict[str, str]] = []
        self._cell: str | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("data-testid") == self.row_testid:
            self.rows.append({"_key": a.get("data-job") or a.get("data-rank") or ""})
        elif self.rows and tag == "td":
            self._cell = a.get("data-testid") or str(len(self.rows[-1]) - 1)
            self.rows[-1][self._cell] = ""
        elif tag == "tr":
            self._cell = None

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self.rows[-1][self._cell] += data


def rows(html: str, testid: str = "job-row") -> list[dict[str, str]]:
    parser = _Rows(testid)
    parser.feed(html)
    return [{k: " ".join(v.split()) for k, v in row.items()} for row in parser.rows]


def by_name(html: str) -> dict[str, dict[str, str]]:
    return {row["job-name"]: row for row in rows(html)}


def page(server: Harness, path: str, status: int = 200, **params: Any) -> str:
    r = server.http.get(path, params=params, follow_redirects=False)
    assert r.status_code == status, r.text
    return r.text


def put_log(server: Harness, node: str, job_id: int, data: bytes, offset: int) -> None:
    r = server.http.put(
        f"{API}/agent/jobs/{job_id}/attempts/1/log",
        params={"offset": offset},
        content=data,
        headers=server.h(node),
    )
    assert r.status_code == 200, r.text


def report(server: Harness, node: str, job: dict[str, Any], state: str, **extra: Any) -> None:
    server.sync(node, [{"job_id": job["id"], "attempt": 1, "state": state, **extra}])


def metrics(server: Harness, node: str, n: int, util: dict[int, float]) -> None:
    at = server.clock.now()
    body = {
        "samples": [
            {
                "at": at.isoformat(),
                "gpus": [
                    {"index": i, "uuid": f"GPU-{node}-{i}", "utilization_percent": util.get(i)}
                    for i in range(n)
                ],
            }
        ]
    }
    r = server.post("/agent/metrics", body, node)
    assert r.status_code == 204, r.text


# ---------------------------------------------------------------- the jobs table


def test_jobs_are_listed_newest_first_fifty_a_page(server: Harness) -> None:
    for i in range(120):
        assert server.submit(f"job-{i}").status_code == 201
    login(server, server.admin)
    html = page(server, "/jobs")
    listed = rows(html)
    assert len(listed) == 50
    assert listed[0]["job-name"] == "job-119" and listed[-1]["job-name"] == "job-70"
    assert "1\u201350 of <b>120</b> jobs" in html
    assert 'href="/jobs?page=3"' in html and 'data-testid="page-next"' in html
    third = rows(page(server, "/jobs", page=3))
    assert len(third) == 20
    assert [r["job-name"] for r in third] == [f"job-{i}" for i in range(19, -1, -1)]
    # Past the last page: the last page.
    assert len(rows(page(server, "/jobs", page=9))) == 20
    # The refreshing fragment: the same rows, without the page around them.
    fragment = page(server, "/fragments/jobs", page=3)
    assert "<html" not in fragment and len(rows(fragment)) == 20
    assert 'hx-get="/fragments/jobs?page=3"' in page(server, "/jobs", page=3)


def test_filters_by_project_user_and_state_and_deleted_jobs(server: Harness) -> None:
    assert server.post("/projects", {"name": "team-a", "quota": 1}).status_code == 201
    alice = server.make_user("alice", projects=("team-a",))
    node = server.register("n1", gpus=1)
    for i in range(3):
        assert server.submit(f"a-{i}", alice, project="team-a", gpus=1).status_code == 201
    server.submit("mine")
    server.submit("gone")
    r = server.http.delete(f"{API}/jobs/default/gone", headers=server.h(server.admin))
    assert r.status_code == 200, r.text
    server.cycle()
    running = server.job("a-0", "team-a")
    report(server, node, running, "running", pid=5)
    login(server, alice)

    html = page(server, "/jobs")
    assert set(by_name(html)) == {"a-0", "a-1", "a-2", "mine"}  # deleted: hidden
    assert set(by_name(page(server, "/jobs", all="1"))) == {"a-0", "a-1", "a-2", "mine", "gone"}
    assert set(by_name(page(server, "/jobs", project="team-a"))) == {"a-0", "a-1", "a-2"}
    assert set(by_name(page(server, "/jobs", user="admin"))) == {"mine"}
    only = by_name(page(server, "/jobs", project="team-a", state="running"))
    assert set(only) == {"a-0"} and only["a-0"]["job-state"] == "running"
    pending = page(server, "/jobs", state="pending", project="team-a")
    assert set(by_name(pending)) == {"a-1", "a-2"}
    # The form keeps the choices, and the refresh asks for the same filters.
    assert '<option value="team-a" selected>' in pending
    assert 'hx-get="/fragments/jobs?project=team-a&amp;state=pending"' in pending
    # A state that does not exist filters nothing.
    assert len(rows(page(server, "/jobs", state="sleeping"))) == 4
    # Name: a part of it, any case; LIKE's wildcards are plain characters.
    assert set(by_name(page(server, "/jobs", name="A-"))) == {"a-0", "a-1", "a-2"}
    assert set(by_name(page(server, "/jobs", name=" mi "))) == {"mine"}
    assert "No jobs match these filters" in page(server, "/jobs", name="a_0")
    assert "No jobs match these filters" in page(server, "/jobs", name="%")
    named = page(server, "/jobs", name="a-", state="pending")
    assert set(by_name(named)) == {"a-1", "a-2"}
    assert 'value="a-"' in named
    assert 'hx-get="/fragments/jobs?state=pending&amp;name=a-"' in named
    # What the form sends (every field, most empty) is sent on to the short URL.
    r = server.http.get("/jobs?project=&user=&state=pending&name=a-", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/jobs?state=pending&name=a-")
    r = server.http.get("/jobs?project=&user=&state=&name=", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/jobs")
    assert "No jobs match these filters" in page(server, "/jobs", user="nobody")
    row = by_name(html)["a-0"]
    assert (row["job-project"], row["job-user"], row["job-kind"]) == ("team-a", "alice", "train")
    assert row["job-node"] == "n1"


def test_gpu_reason_and_utilization_cells(server: Harness) -> None:
    node = server.register("n1", gpus=4)
    server.submit("whole", gpus=2)
    server.submit("half", gpus=0.5)
    server.submit("mem", gpu_memory_bytes=20 * GiB)
    server.submit("huge", gpus=4)  # cannot fit while the others run
    server.submit("broken")
    server.cycle()
    broken = server.job("broken")
    report(server, node, broken, "exited", exit_code=3)
    whole, half, mem = (server.job(n) for n in ("whole", "half", "mem"))
    report(server, node, whole, "running", pid=9)
    util = {whole["gpu_ids"][0]: 80.0, whole["gpu_ids"][1]: 40.0}
    metrics(server, node, 4, util)
    server.clock.advance(5)
    login(server, server.admin)

    cells = by_name(page(server, "/jobs"))
    w0, w1 = whole["gpu_ids"]
    assert cells["whole"]["job-gpus"] == f"2 ({w0},{w1})"
    assert cells["half"]["job-gpus"] == f"0.5 ({half['gpu_ids'][0]})"
    assert cells["mem"]["job-gpus"] == f"20GiB ({mem['gpu_ids'][0]})"
    assert cells["huge"]["job-gpus"] == "4" and cells["huge"]["job-node"] == "-"
    assert cells["whole"]["job-util"] == "60%"  # the mean of its two GPUs
    assert cells["huge"]["job-util"] == "n/a" and cells["broken"]["job-util"] == "n/a"
    huge = server.job("huge")
    assert huge["state"] == "pending" and huge["reason"]
    assert cells["huge"]["job-reason"] == " ".join(huge["reason"].split())
    assert cells["broken"]["job-state"] == "failed"
    assert cells["broken"]["job-reason"] == "exited with code 3"
    assert cells["whole"]["job-reason"] == ""  # running: no reason column
    assert cells["whole"]["job-runtime"] != "-" and cells["huge"]["job-runtime"] == "-"
    assert 'class="state state-failed"' in page(server, "/jobs")


def test_a_gang_shows_its_nodes_and_workers(server: Harness) -> None:
    n1 = server.register("n1", gpus=4)
    n2 = server.register("n2", gpus=4)
    assert server.submit("gang", gpus=4, workers=2).status_code == 201
    server.cycle()
    gang = server.job("gang")
    report(server, n1, gang, "running", rank=0, pid=10)
    report(server, n2, gang, "running", rank=1, pid=20)
    login(server, server.admin)
    row = by_name(page(server, "/jobs"))["gang"]
    assert row["job-gpus"] == "2x4"
    assert row["job-node"] == f"{gang['node']} +1"

    html = page(server, "/jobs/default/gang")
    workers = rows(html, "worker-row")
    assert [(w["_key"], w["1"]) for w in workers] == [
        (str(w["rank"]), w["node"]) for w in gang["worker_list"]
    ]
    assert {w["1"] for w in workers} == {"n1", "n2"}
    assert 'data-testid="log-ranks"' in html
    assert 'data-testid="field-gpus">2x4<' in html
    # Worker 1's log tail asks for rank 1.
    assert "rank=1" in page(server, "/jobs/default/gang", rank=1).split('data-testid="job-log"')[1]


# ---------------------------------------------------------------- one job


def test_the_job_page_shows_its_fields_events_and_charts(server: Harness) -> None:
    node = server.register("n1", gpus=2)
    server.submit("train", gpus=1, env={"SECRET": "hunter2"})
    server.cycle()
    job = server.job("train")
    report(server, node, job, "running", pid=3)
    login(server, server.admin)
    html = page(server, "/jobs/default/train")
    assert 'data-testid="field-state"><span class="state state-running">running<' in html
    assert 'data-testid="field-node">n1<' in html
    assert 'data-testid="field-env">SECRET<' in html and "hunter2" not in html
    assert [r["1"] for r in rows(html, "event-row")] == ["submitted", "bound", "running"]
    for metric in ("utilization_percent", "memory_used_bytes", "cpu_percent"):
        assert f'data-series="/api/v1/metrics/jobs/default/train?metric={metric}"' in html
    fragment = page(server, "/fragments/jobs/default/train")
    assert "<html" not in fragment and 'data-testid="job-events"' in fragment


def test_an_unknown_job_is_a_404_page(server: Harness) -> None:
    login(server, server.admin)
    assert 'data-testid="job-missing"' in page(server, "/jobs/default/nope", 404)
    assert 'data-testid="job-missing"' in page(server, "/jobs/no-such-project/x", 404)
    page(server, "/fragments/jobs/default/nope/log", 404)
    page(server, "/fragments/jobs/default/nope", 404)


def test_the_log_tail_appends_new_output_until_the_job_ends(server: Harness) -> None:
    node = server.register("n1", gpus=1)
    server.submit("train", gpus=1)
    server.cycle()
    job = server.job("train")
    report(server, node, job, "running", pid=3)
    put_log(server, node, job["id"], b"hello <world>\n", 0)
    login(server, server.admin)

    html = page(server, "/jobs/default/train")
    log = html.split('data-testid="job-log"')[1]
    assert "hello &lt;world&gt;\n" in log  # escaped
    assert 'data-offset="14"' in log and 'hx-trigger="every 2s"' in log
    tail = "/fragments/jobs/default/train/log"

    quiet = page(server, tail, offset=14, attempt=1)
    assert "hello" not in quiet and 'data-offset="14"' in quiet

    put_log(server, node, job["id"], b"step 1 caf\xc3", 14)  # "é" cut in two
    more = page(server, tail, offset=14, attempt=1)
    assert more.startswith("step 1 caf<span") and 'data-offset="24"' in more
    put_log(server, node, job["id"], b"\xa9\n", 25)
    rest = page(server, tail, offset=24, attempt=1)
    assert rest.startswith("é\n<span") and 'data-offset="27"' in rest

    report(server, node, job, "exited", exit_code=0)
    assert server.job("train")["state"] == "succeeded"
    end = page(server, tail, offset=27, attempt=1)
    assert 'data-testid="log-end"' in end and "hx-get" not in end  # polling stops
    finished = page(server, "/jobs/default/train")
    assert 'data-testid="log-end"' in finished and 'data-testid="log-tail"' not in finished


def test_a_long_log_opens_on_its_newest_output(server: Harness) -> None:
    node = server.register("n1", gpus=1)
    server.submit("chatty", gpus=1)
    server.cycle()
    job = server.job("chatty")
    report(server, node, job, "running", pid=3)
    data = b"".join(b"line %06d\n" % i for i in range(10_000))  # 110,000 bytes
    put_log(server, node, job["id"], data, 0)
    login(server, server.admin)
    html = page(server, "/jobs/default/chatty")
    assert 'data-testid="log-skipped"' in html
    assert "line 009999\n" in html and "line 000000" not in html
    assert f'data-offset="{len(data)}"' in html
    # A poll from the start catches up a chunk at a time, at once ("load").
    first = page(server, "/fragments/jobs/default/chatty/log", offset=0, attempt=1)
    assert 'data-offset="65536"' in first and 'hx-trigger="load"' in first


def test_a_pending_job_waits_for_output_then_follows_its_first_attempt(server: Harness) -> None:
    server.submit("later", gpus=1)
    login(server, server.admin)
    html = page(server, "/jobs/default/later")
    assert 'data-testid="log-tail"' in html and "attempt=0" in html
    node = server.register("n1", gpus=1)
    server.cycle()
    job = server.job("later")
    report(server, node, job, "running", pid=3)
    put_log(server, node, job["id"], b"started\n", 0)
    switched = page(server, "/fragments/jobs/default/later/log", offset=0, attempt=0)
    assert "attempt=1" in switched and 'hx-trigger="load"' in switched
    assert "started" in page(server, "/fragments/jobs/default/later/log", offset=0, attempt=1)


def test_logs_are_for_members_of_the_jobs_project(server: Harness) -> None:
    assert server.post("/projects", {"name": "team-a", "quota": 1}).status_code == 201
    alice = server.make_user("alice", projects=("team-a",))
    bob = server.make_user("bob")  # member of default only
    node = server.register("n1", gpus=1)
    server.submit("secret", alice, project="team-a", gpus=1)
    server.cycle()
    job = server.job("secret", "team-a")
    report(server, node, job, "running", pid=3)
    put_log(server, node, job["id"], b"private output\n", 0)

    login(server, bob)
    assert "secret" in by_name(page(server, "/jobs"))  # names, states, owners: for all
    html = page(server, "/jobs/team-a/secret")
    assert "Logs are visible to members of project team-a." in html
    assert "private output" not in html and 'data-testid="job-log"' not in html
    r = server.http.get("/fragments/jobs/team-a/secret/log", params={"offset": 0})
    assert r.status_code == 403 and "private output" not in r.text
    assert "Logs are visible to members of project team-a." in r.text

    login(server, alice)
    assert "private output" in page(server, "/jobs/team-a/secret")
    assert "private output" in page(server, "/fragments/jobs/team-a/secret/log", offset=0)


# ---------------------------------------------------------------- queries


@contextmanager
def counting(server: Harness) -> Iterator[list[str]]:
    """Every SQL statement run on the server's engines while inside."""
    statements: list[str] = []

    def count(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engines: list[Engine] = [server.ctx.db.engine]
    read_engine = getattr(server.ctx.db, "_read_engine", None)
    if read_engine is not None:
        engines.append(read_engine)
    for engine in engines:
        event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", count)


def test_the_jobs_page_runs_as_many_queries_for_200_jobs_as_for_10(server: Harness) -> None:
    n1 = server.register("n1", gpus=4)
    server.register("n2", gpus=4)
    server.submit("gang", gpus=2, workers=2)
    server.submit("one", gpus=1)
    server.submit("part", gpus=0.5)
    server.cycle()
    metrics(server, n1, 4, {0: 50.0, 1: 50.0, 2: 50.0, 3: 50.0})
    for i in range(7):
        server.submit(f"wait-{i}", gpus=4)
    login(server, server.admin)

    def queries() -> tuple[int, int]:
        page(server, "/jobs")  # warm: connections, caches
        with counting(server) as statements:
            html = page(server, "/jobs")
        return len(statements), len(rows(html))

    few, shown = queries()
    assert shown == 10
    for i in range(190):
        server.submit(f"more-{i}")
    many, shown = queries()
    assert shown == 50
    assert many == few, (few, many)
    assert few <= 16
