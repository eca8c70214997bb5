"""`corral server` and `corral agent` turn flags into their settings and hand over.

The real `serve` and `run_agent` are replaced by fakes in ``sys.modules``: these tests
are about the flags, not about running a server.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from cli_fakes import Runner

from corral.agent.config import AgentConfig
from corral.server.settings import ServerSettings


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[ServerSettings]:
    calls: list[ServerSettings] = []
    fake = types.ModuleType("corral.server.main")
    fake.serve = calls.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "corral.server.main", fake)
    return calls


@pytest.fixture
def agents(monkeypatch: pytest.MonkeyPatch) -> list[AgentConfig]:
    calls: list[AgentConfig] = []

    def run_agent(config: AgentConfig) -> int:
        calls.append(config)
        return 3

    fake = types.ModuleType("corral.agent.agent")
    fake.run_agent = run_agent  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "corral.agent.agent", fake)
    return calls


def test_server_defaults(run: Runner, served: list[ServerSettings]) -> None:
    result = run("server")

    assert result.exit_code == 0, result.output
    assert served == [ServerSettings()]


def test_server_flags(run: Runner, served: list[ServerSettings], tmp_path: Path) -> None:
    result = run(
        "server", "--host", "0.0.0.0", "--port", "9000", "--data-dir", str(tmp_path),
        "--database-url", "postgresql+psycopg://c@db/c", "--node-not-ready-after", "5s",
        "--node-down-after", "2m",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert served == [
        ServerSettings(
            host="0.0.0.0",
            port=9000,
            data_dir=tmp_path,
            database_url="postgresql+psycopg://c@db/c",
            node_not_ready_after=5,
            node_down_after=120,
        )
    ]


def test_server_database_url_from_env(
    run: Runner, served: list[ServerSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_DATABASE_URL", "postgresql+psycopg://env@db/c")

    run("server")

    assert served[0].database_url == "postgresql+psycopg://env@db/c"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "'--port'"),
        (["--node-not-ready-after", "soon"], "'--node-not-ready-after': 'soon' is not a duration"),
        (["--node-not-ready-after", "1m", "--node-down-after", "30s"],
         "--node-down-after: must be longer than --node-not-ready-after"),
    ],
)  # fmt: skip
def test_server_bad_flags(
    run: Runner, served: list[ServerSettings], args: list[str], message: str
) -> None:
    result = run("server", *args)

    assert result.exit_code == 2
    assert message in result.stderr
    assert served == []


def test_agent_flags_and_exit_code(run: Runner, agents: list[AgentConfig], tmp_path: Path) -> None:
    result = run(
        "agent", "--server", "http://head:8420/", "--join-token", "j", "--name", "gpu01.lab",
        "--state-dir", str(tmp_path), "--simulate-gpus", "8xA100-80GB", "--user-map",
        "alice=ajones", "--user-map", "*=nobody", "--allow-root-jobs", "--grace-period", "30s",
        "--no-cgroups",
    )  # fmt: skip

    assert result.exit_code == 3  # run_agent's return code
    assert agents == [
        AgentConfig(
            server="http://head:8420",
            join_token="j",
            name="gpu01.lab",
            state_dir=tmp_path,
            simulate_gpus="8xA100-80GB",
            user_map={"alice": "ajones", "*": "nobody"},
            allow_root_jobs=True,
            cgroups=False,
            grace_seconds=30,
        )
    ]


def test_agent_defaults_and_join_token_from_env(
    run: Runner, agents: list[AgentConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_JOIN_TOKEN", "from-env")

    run("agent", "--server", "http://head:8420")

    assert agents == [AgentConfig(server="http://head:8420", join_token="from-env")]


def test_agent_user_map_file(run: Runner, agents: list[AgentConfig], tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("# corral user -> unix account\nalice ajones\n\n*   nobody  # others\n")

    result = run("agent", "--server", "http://h:1", "--user-map-file", str(users))

    assert result.exit_code == 3, result.output
    assert agents[0].user_map == {"alice": "ajones", "*": "nobody"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("alice\n", ":1: expected two words"),
        ("# ok\nalice ajones extra\n", ":2: expected two words"),
        ("Alice ajones\n", ":1: 'Alice' is not a Corral user name"),
        ("alice Bad-Account\n", ":1: 'Bad-Account' is not a Unix account name"),
    ],
)
def test_agent_user_map_file_errors_name_the_line(
    run: Runner, agents: list[AgentConfig], tmp_path: Path, content: str, message: str
) -> None:
    users = tmp_path / "users"
    users.write_text(content)

    result = run("agent", "--server", "http://h:1", "--user-map-file", str(users))

    assert result.exit_code == 2
    assert "--user-map-file" in result.stderr
    assert f"{users}{message}" in result.stderr
    assert agents == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user-map", "alice"], "'--user-map': 'alice' is not in KEY=VALUE form"),
        (["--user-map", "alice=Root!"], "--user-map: 'Root!' is not a Unix account name"),
        (["--user-map", "a=b", "--user-map-file", "/dev/null"], "not both"),
        (["--name", "Bad_Name"], "'--name'"),
        (["--server", "ftp://h"], "'--server': server URL 'ftp://h' must start with http"),
    ],
)
def test_agent_bad_flags(
    run: Runner, agents: list[AgentConfig], args: list[str], message: str
) -> None:
    result = run("agent", "--server", "http://h:1", *args)

    assert result.exit_code == 2
    assert message in result.stderr
    assert agents == []


def test_agent_needs_a_server(run: Runner, agents: list[AgentConfig]) -> None:
    result = run("agent")

    assert result.exit_code == 2
    assert "Missing option '--server'" in result.stderr
