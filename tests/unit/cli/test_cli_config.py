"""Where the server, token and project come from; login, logout, whoami, project set."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cli_fakes import SERVER, FakeApi, Runner, project

WHOAMI = {"name": "alice", "role": "user", "projects": ["team-a", "team-b"]}


@pytest.fixture
def whoami(api: FakeApi) -> FakeApi:
    api.on("GET", "/whoami", json=WHOAMI)
    return api


def sent_to(api: FakeApi) -> tuple[str, str | None]:
    """(server, token) of the last request."""
    request = api.requests[-1]
    auth = request.headers.get("Authorization")
    server = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
    return server, auth.removeprefix("Bearer ") if auth else None


def test_without_any_config_the_local_default_server_is_used(run: Runner, whoami: FakeApi) -> None:
    run("whoami")

    assert sent_to(whoami) == ("http://127.0.0.1:8420", None)


def test_the_config_file_is_used(run: Runner, whoami: FakeApi, logged_in: Path) -> None:
    run("whoami")

    assert sent_to(whoami) == (SERVER, "t-admin")


def test_env_overrides_the_file(
    run: Runner, whoami: FakeApi, logged_in: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_SERVER", "http://env-server:1")
    monkeypatch.setenv("CORRAL_TOKEN", "t-env")

    run("whoami")

    assert sent_to(whoami) == ("http://env-server:1", "t-env")


def test_flags_override_env_and_file(
    run: Runner, whoami: FakeApi, logged_in: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_SERVER", "http://env-server:1")
    monkeypatch.setenv("CORRAL_TOKEN", "t-env")

    run("--server", "flag-server:2", "--token", "t-flag", "whoami")

    assert sent_to(whoami) == ("http://flag-server:2", "t-flag")


def test_a_non_http_server_flag_is_a_usage_error(run: Runner, whoami: FakeApi) -> None:
    result = run("--server", "ftp://x", "whoami")

    assert result.exit_code == 2
    assert "'--server': server URL 'ftp://x' must start with http:// or https://" in (result.stderr)
    assert whoami.requests == []


def test_a_non_http_server_in_the_environment_is_an_error(
    run: Runner, whoami: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_SERVER", "ftp://x")

    result = run("whoami")

    assert result.exit_code == 1
    assert result.stderr == "error: server URL 'ftp://x' must start with http:// or https://\n"


def test_a_corrupt_config_file_is_an_error_not_a_traceback(run: Runner, home: Path) -> None:
    (home / "config.json").write_text("{not json")

    result = run("whoami")

    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {home / 'config.json'} is not valid JSON")


# ---------------------------------------------------------------- login / logout / whoami


def test_login_checks_the_token_then_saves_it_privately(
    run: Runner, whoami: FakeApi, home: Path
) -> None:
    result = run("login", "--server", "gpu-head:8420", "--token", "t-alice")

    assert result.exit_code == 0, result.output
    assert "Logged in to http://gpu-head:8420 as alice (user)." in result.stdout
    assert sent_to(whoami) == ("http://gpu-head:8420", "t-alice")
    config = home / "config.json"
    assert json.loads(config.read_text()) == {"server": "http://gpu-head:8420", "token": "t-alice"}
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


def test_login_prompts_for_the_token_without_echo(run: Runner, whoami: FakeApi, home: Path) -> None:
    result = run("login", "--server", SERVER, input="t-typed\n")

    assert result.exit_code == 0, result.output
    assert "t-typed" not in result.output  # hidden input
    assert json.loads((home / "config.json").read_text())["token"] == "t-typed"


def test_login_with_a_bad_token_saves_nothing(run: Runner, api: FakeApi, home: Path) -> None:
    api.on(
        "GET", "/whoami", status=401,
        json={"error": {"code": "unauthorized", "message": "unknown token"}},
    )  # fmt: skip

    result = run("login", "--server", SERVER, "--token", "wrong")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: unknown token\n")
    assert not (home / "config.json").exists()


def test_login_keeps_the_project_only_for_the_same_server(
    run: Runner, whoami: FakeApi, home: Path
) -> None:
    config = home / "config.json"
    config.write_text(json.dumps({"server": SERVER, "token": "old", "project": "team-b"}))

    run("login", "--server", SERVER, "--token", "new")
    assert json.loads(config.read_text())["project"] == "team-b"

    run("login", "--server", "http://elsewhere:8420", "--token", "new")
    assert "project" not in json.loads(config.read_text())


def test_logout_forgets_the_token_only(run: Runner, logged_in: Path) -> None:
    logged_in.write_text(json.dumps({"server": SERVER, "token": "t", "project": "team-a"}))

    result = run("logout")

    assert result.exit_code == 0
    assert result.stdout == f"Logged out of {SERVER}.\n"
    assert json.loads(logged_in.read_text()) == {"server": SERVER, "project": "team-a"}
    assert run("logout").stdout == "Not logged in.\n"


def test_whoami_shows_the_user(run: Runner, whoami: FakeApi, logged_in: Path) -> None:
    result = run("whoami")

    assert result.exit_code == 0
    assert "alice" in result.stdout
    assert "team-a, team-b" in result.stdout
    assert SERVER in result.stdout


def test_whoami_json(run: Runner, whoami: FakeApi) -> None:
    assert json.loads(run("whoami", "-o", "json").stdout) == WHOAMI


# ---------------------------------------------------------------- project set


def test_project_set_checks_and_saves_the_current_project(
    run: Runner, api: FakeApi, logged_in: Path
) -> None:
    api.on("GET", "/projects/team-a", json=project("team-a"))

    result = run("project", "set", "team-a")

    assert result.exit_code == 0, result.output
    assert result.stdout == "Current project is now team-a.\n"
    assert json.loads(logged_in.read_text()) == {
        "server": SERVER,
        "token": "t-admin",
        "project": "team-a",
    }


def test_project_set_refuses_an_unknown_project(run: Runner, api: FakeApi, logged_in: Path) -> None:
    api.on(
        "GET", "/projects/nope", status=404,
        json={"error": {"code": "not_found", "message": "project 'nope' not found"}},
    )  # fmt: skip

    result = run("project", "set", "nope")

    assert result.exit_code == 1
    assert result.stderr == "error: project 'nope' not found\n"
    assert "project" not in json.loads(logged_in.read_text())
