"""Click parameter types for what users type on the command line.

Each type turns text into the value the API wants (bytes, seconds, a valid name …) or
fails with one line that names the option, so a typo is a usage error (exit 2) before
any request is sent. The server validates everything again; these checks only make the
common mistakes cheap to see.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

from corral.cli.config import normalize_server
from corral.core.errors import CorralError, InvalidRequest
from corral.core.names import check_name, check_node_name
from corral.core.quantities import parse_memory

F = TypeVar("F", bound=Callable[..., Any])

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> float:
    """Return the number of seconds in ``text``: ``30s``, ``5m``, ``1h30m``, ``1.5h``, ``45``.

    A bare number is seconds. Raises `ValueError` for anything else.
    """
    cleaned = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", cleaned):
        return float(cleaned)
    # fullmatch of the repeated group guarantees no junk between or around the parts.
    if not cleaned or not re.fullmatch(rf"(?:{_DURATION_PART.pattern})+", cleaned):
        raise ValueError(f"{text!r} is not a duration (examples: 30s, 5m, 1h30m, 2d)")
    return sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(cleaned))


class NameType(click.ParamType[str]):
    """A name checked by one of the rules of `corral.core.names`."""

    def __init__(self, what: str, check: Callable[[str], str] | None = None) -> None:
        self.name = what
        self.check = check or (lambda value: check_name(value, what=what))

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return self.check(str(value))
        except InvalidRequest as exc:
            # The core message starts with "name: "; click names the parameter itself.
            self.fail(exc.message.removeprefix("name: "), param, ctx)


class MemoryType(click.ParamType[int]):
    """A memory size such as ``16GiB`` or ``512MiB``; converts to bytes."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            size = parse_memory(str(value))
        except InvalidRequest:
            self.fail(f"{value!r} is not a size (examples: 512MiB, 16GiB, 1TiB)", param, ctx)
        if size <= 0:
            self.fail("must be more than zero bytes", param, ctx)
        return size


class DurationType(click.ParamType[float]):
    """A duration such as ``30s``, ``5m`` or ``1h30m``; converts to seconds (float)."""

    name = "duration"

    def __init__(self, *, allow_zero: bool = True) -> None:
        self.allow_zero = allow_zero

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if seconds == 0 and not self.allow_zero:
            self.fail("must be longer than zero", param, ctx)
        return seconds


class KeyValueType(click.ParamType[tuple[str, str]]):
    """``KEY=VALUE`` (the value may contain '=' and may be empty); converts to a pair."""

    name = "key=value"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value  # already converted (click converts defaults too)
        key, sep, rest = str(value).partition("=")
        if not sep or not key:
            self.fail(f"{value!r} is not in KEY=VALUE form", param, ctx)
        return key, rest


class VolumeType(click.ParamType[dict[str, Any]]):
    """``NAME:/path`` (an admin's volume), ``/host/path:/path`` (where the server allows
    host paths), either with ``:ro`` for read-only; converts to a `VolumeRequest` dict."""

    name = "volume"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        parts = str(value).split(":")
        read_only = False
        if len(parts) == 3 and parts[2] in ("ro", "rw"):
            read_only = parts.pop() == "ro"
        if len(parts) != 2 or not parts[0] or not parts[1].startswith("/"):
            self.fail(
                f"{value!r}: give NAME:/path/in/job (a volume of `corral volume list`) or "
                "/host/path:/path/in/job, optionally with :ro",
                param,
                ctx,
            )
        return {"source": parts[0], "target": parts[1], "read_only": read_only}


class ServerUrlType(click.ParamType[str]):
    """A server URL; ``host:8420`` gets ``http://`` added, other schemes are refused."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return normalize_server(str(value))
        except CorralError as exc:
            self.fail(exc.message, param, ctx)


JOB_NAME = NameType("job")
PROJECT_NAME = NameType("project")
USER_NAME = NameType("user")
NODE_NAME = NameType("node", check_node_name)
POOL_NAME = NameType("pool")
MEMORY = MemoryType()
DURATION = DurationType()
SERVER_URL = ServerUrlType()
KEY_VALUE = KeyValueType()
VOLUME = VolumeType()


def project_option(help_text: str) -> Callable[[F], F]:
    """``-p/--project NAME``, passed as ``project`` (None when not given)."""
    return click.option("-p", "--project", type=PROJECT_NAME, help=help_text)
