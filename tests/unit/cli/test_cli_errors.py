"""Expected errors become one `error:` line and exit code 1, never a traceback."""

from __future__ import annotations

import httpx
from cli_fakes import NOW, FakeApi, Runner

from corral.cli.config import CliState


def test_401_is_an_error_line_with_a_login_hint(run: Runner, api: FakeApi) -> None:
    api.on(
        "GET", "/jobs", status=401,
        json={"error": {"code": "unauthorized", "message": "missing or unknown token"}},
    )  # fmt: skip

    result = run("list")

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: missing or unknown token",
        "hint: log in with a valid token: `corral login` (or set CORRAL_TOKEN)",
    ]
    assert result.stdout == ""


def test_403_is_an_error_line(run: Runner, api: FakeApi) -> None:
    api.on(
        "POST", "/projects", status=403,
        json={"error": {"code": "forbidden", "message": "only admins can create projects"}},
    )  # fmt: skip

    result = run("project", "create", "team-x")

    assert result.exit_code == 1
    assert result.stderr == "error: only admins can create projects\n"


def test_an_unreachable_server_gets_a_hint(run: Runner) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    state = CliState(transport=httpx.MockTransport(refuse), clock=lambda: NOW)
    result = run("nodes", state=state)

    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: cannot reach the Corral server at http://127.0.0.1:8420")
    assert lines[1] == "hint: is the server running? set CORRAL_SERVER or run `corral login`"
    assert "Traceback" not in result.output


def test_a_non_json_error_page_is_still_one_line(run: Runner, api: FakeApi) -> None:
    api.on(
        "GET", "/nodes",
        handler=lambda r: httpx.Response(502, text="<html>Bad Gateway</html>"),
    )  # fmt: skip

    result = run("nodes")

    assert result.exit_code == 1
    assert result.stderr == "error: server answered HTTP 502: <html>Bad Gateway</html>\n"


def test_an_answer_of_another_shape_is_reported_not_a_traceback(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/jobs", json={"jobs": [{"name": "x"}]})

    result = run("list")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: unexpected answer from the server (JobList.jobs.0.")
    assert "same Corral version" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_listing_without_its_key_is_reported(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/projects", json={"items": []})

    result = run("project", "list")

    assert result.exit_code == 1
    assert "unexpected answer from the server (no 'projects' list)" in result.stderr


def test_usage_errors_exit_with_2(run: Runner) -> None:
    result = run("get")

    assert result.exit_code == 2
    assert "Missing argument 'NAME'" in result.stderr
