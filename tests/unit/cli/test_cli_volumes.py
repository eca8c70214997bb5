"""`corral volume create | list | delete`."""

from __future__ import annotations

from cli_fakes import FakeApi, Runner

CREATED = "2026-11-23T12:00:00+00:00"


def test_create_sends_the_volume_and_says_how_to_use_it(run: Runner, api: FakeApi) -> None:
    api.on(
        "POST",
        "/volumes",
        status=201,
        json={"name": "homes", "host_path": "/home/{unix_user}", "read_only": False,
              "description": "home directories", "created_at": CREATED},
    )  # fmt: skip
    result = run(
        "volume", "create", "homes", "/home/{unix_user}", "--description", "home directories"
    )
    assert result.exit_code == 0, result.output
    assert api.body("POST", "/volumes") == {
        "name": "homes",
        "host_path": "/home/{unix_user}",
        "read_only": False,
        "description": "home directories",
    }
    assert "Volume homes: /home/{unix_user} (read-write)." in result.stdout
    assert "--volume homes:/path" in result.stdout


def test_create_refuses_bad_paths_before_sending(run: Runner, api: FakeApi) -> None:
    for path, words in (
        ("srv/data", "give an absolute path"),
        ("/srv/../etc", "'..'"),
        ("/home/{uid}", "{user} and {unix_user}"),
    ):
        result = run("volume", "create", "data", path)
        assert result.exit_code == 2, result.output
        assert "Invalid value for HOST_PATH" in result.output and words in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not api.requests


def test_list_prints_name_path_and_mode(run: Runner, api: FakeApi) -> None:
    api.on(
        "GET",
        "/volumes",
        json={"volumes": [
            {"name": "datasets", "host_path": "/srv/datasets", "read_only": True,
             "description": None, "created_at": CREATED},
        ]},
    )  # fmt: skip
    result = run("volume", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "HOST-PATH", "MODE", "DESCRIPTION"]
    assert lines[1].split() == ["datasets", "/srv/datasets", "ro"]


def test_delete(run: Runner, api: FakeApi) -> None:
    api.on("DELETE", "/volumes/datasets", status=204)
    result = run("volume", "delete", "datasets")
    assert result.exit_code == 0, result.output
    assert "Volume datasets deleted." in result.stdout
