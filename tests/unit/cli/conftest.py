"""Fixtures of the CLI tests: a fake API, an isolated $CORRAL_HOME, and a runner.

The ``run`` fixture invokes the real command tree with ``CliRunner``, the fake API as
transport, and a fixed clock, so relative times ("5m") are exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_fakes import NOW, SERVER, FakeApi, Runner
from click.testing import CliRunner, Result

from corral.cli.config import CliState
from corral.cli.main import cli


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def home(corral_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $CORRAL_HOME, and none of the developer's CORRAL_* overrides."""
    for var in ("CORRAL_SERVER", "CORRAL_TOKEN", "CORRAL_JOIN_TOKEN", "CORRAL_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    return corral_home


@pytest.fixture
def logged_in(home: Path) -> Path:
    """A config file as `corral login` writes it; returns its path."""
    path = home / "config.json"
    path.write_text(json.dumps({"server": SERVER, "token": "t-admin"}))
    return path


@pytest.fixture
def run(api: FakeApi, home: Path) -> Runner:
    """``run("list", "-o", "json")`` → click's Result, talking to ``api``."""

    def invoke(*args: str, input: str | None = None, state: CliState | None = None) -> Result:
        state = state or CliState(transport=api.transport, clock=lambda: NOW)
        return CliRunner().invoke(cli, list(args), obj=state, input=input)

    return invoke
