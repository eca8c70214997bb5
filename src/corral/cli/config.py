"""The CLI's configuration and the one place where API clients are made.

``$CORRAL_HOME/config.json`` holds ``{"server", "token", "project"}`` (written mode 0600:
it holds a secret). Where the server and token come from, strongest first:

1. the global options ``corral --server URL --token T …``;
2. the environment variables ``CORRAL_SERVER`` and ``CORRAL_TOKEN``;
3. the config file (written by ``corral login``, ``corral up`` and ``corral demo``);
4. for the server only: ``http://127.0.0.1:8420``, where ``corral up`` listens.

Every command gets a `CliState` as click's ``ctx.obj`` and asks it for a client with
`CliState.client`. Tests hand in their own ``CliState(transport=httpx.MockTransport(…))``
through ``CliRunner.invoke(cli, args, obj=state)``, so no sockets are opened.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import click
import httpx

from corral.client import ApiClient
from corral.core.errors import CorralError
from corral.paths import DEFAULT_PORT, corral_home, write_secret

DEFAULT_SERVER = f"http://127.0.0.1:{DEFAULT_PORT}"
DEFAULT_PROJECT = "default"
SERVER_ENV = "CORRAL_SERVER"
TOKEN_ENV = "CORRAL_TOKEN"  # noqa: S105 (a variable name, not a secret)


def config_path() -> Path:
    return corral_home() / "config.json"


@dataclass
class CliConfig:
    """What ``config.json`` holds. Every field may be missing (None)."""

    server: str | None = None
    token: str | None = None
    project: str | None = None

    @classmethod
    def load(cls, path: Path | None = None) -> CliConfig:
        """Read the config file; a missing file is an empty config."""
        path = path or config_path()
        try:
            raw = path.read_text()
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise CorralError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise CorralError(
                f"{path} is not valid JSON ({exc}): fix it, or delete it and run `corral login`"
            ) from exc
        if not isinstance(data, dict):
            raise CorralError(f"{path} must hold a JSON object: delete it and run `corral login`")

        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) and value else None

        return cls(server=text("server"), token=text("token"), project=text("project"))

    def save(self, path: Path | None = None) -> Path:
        """Write the config file (mode 0600, since it holds the token); return its path."""
        path = path or config_path()
        body = {"server": self.server, "token": self.token, "project": self.project}
        write_secret(path, json.dumps({k: v for k, v in body.items() if v is not None}, indent=2))
        return path


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class CliState:
    """What the root command hands to every subcommand (click's ``ctx.obj``).

    - ``server_flag`` / ``token_flag``: the global ``--server`` / ``--token`` options;
    - ``transport``: an httpx transport for every client made here (tests inject an
      ``httpx.MockTransport``; None means real HTTP);
    - ``clock``: "now" for relative times ("5m ago"), replaceable in tests.
    """

    server_flag: str | None = None
    token_flag: str | None = None
    transport: httpx.BaseTransport | None = None
    clock: Callable[[], datetime] = _utcnow
    _config: CliConfig | None = field(default=None, repr=False)

    @property
    def config(self) -> CliConfig:
        """The config file's contents, read once per command."""
        if self._config is None:
            self._config = CliConfig.load()
        return self._config

    def save_config(self, config: CliConfig) -> Path:
        self._config = config
        return config.save()

    @property
    def server(self) -> str:
        """The server URL to talk to (flag > env > config file > local default)."""
        url = self.server_flag or os.environ.get(SERVER_ENV) or self.config.server
        return normalize_server(url or DEFAULT_SERVER)

    @property
    def token(self) -> str | None:
        """The API token to send (flag > env > config file), or None."""
        return self.token_flag or os.environ.get(TOKEN_ENV) or self.config.token

    @property
    def current_project(self) -> str | None:
        """The project chosen with `corral project set`, if any."""
        return self.config.project

    @property
    def default_project(self) -> str:
        """The project new jobs go to when ``--project`` is not given."""
        return self.current_project or DEFAULT_PROJECT

    def client(self, *, server: str | None = None, token: str | None = None) -> ApiClient:
        """An `ApiClient` for this command; ``server``/``token`` override the resolved ones.

        Callers close it (``with state.client() as api: …``).
        """
        return ApiClient(
            server or self.server,
            token if token is not None else self.token,
            transport=self.transport,
        )


def normalize_server(url: str) -> str:
    """``host:8420`` → ``http://host:8420``; no trailing slash. Refuses non-HTTP schemes."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise CorralError(f"server URL {url!r} must start with http:// or https://")
    return url


def get_state(ctx: click.Context) -> CliState:
    """The `CliState` of this invocation (made on first use if a test did not pass one)."""
    return ctx.ensure_object(CliState)


pass_state = click.make_pass_decorator(CliState, ensure=True)
"""Decorator giving a command the `CliState` as its first argument."""
