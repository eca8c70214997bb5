"""`corral disk-usage`: the table, filters passed to the server, the empty case."""

from __future__ import annotations

from cli_fakes import NOW, FakeApi, Runner


def test_disk_usage_lists_users_largest_first_with_filters(run: Runner, api: FakeApi) -> None:
    rows = [
        {"node": "n1", "path": "/home", "user": "bob", "used_bytes": 9 * 1024**3,
         "files": 12345, "scanned_at": NOW.isoformat()},
        {"node": "n1", "path": "/home", "user": "alice", "used_bytes": 512 * 1024**2,
         "files": 7, "scanned_at": NOW.isoformat()},
    ]  # fmt: skip
    api.on("GET", "/metrics/disk-usage", json={"usage": rows})
    result = run("disk-usage", "--path", "/home")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NODE", "PATH", "USER", "USED", "FILES", "SCANNED"]
    assert lines[1].split()[:5] == ["n1", "/home", "bob", "9GiB", "12,345"]
    assert lines[2].split()[:5] == ["n1", "/home", "alice", "512MiB", "7"]
    query = dict(api.last("GET", "/metrics/disk-usage").url.params)
    assert query == {"path": "/home"}


def test_no_disk_usage_says_how_to_get_it(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/metrics/disk-usage", json={"usage": []})
    result = run("disk-usage")
    assert result.exit_code == 0
    assert "--disk-usage PATH" in result.stdout
