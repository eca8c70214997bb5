"""How the CLI prints: tables, detail blocks, JSON/YAML, and times.

Human output goes through `print_table` and `print_fields`. On a terminal, tables are
rich tables (bold headers, coloured states); when stdout is a pipe or a file they are
plain space-aligned columns with no colour, box art, wrapping or truncation, so that
``grep`` and ``awk`` see one row per line. ``-o json`` / ``-o yaml`` print the API's
objects as the server returned them, for scripts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import yaml
from pydantic import BaseModel, ValidationError
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from corral.core.errors import CorralError
from corral.core.quantities import format_duration

OUTPUT_FORMATS = ("table", "json", "yaml")

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])

# Colours for states on a terminal; anything not listed prints unstyled.
STATE_STYLES = {
    "running": "green",
    "succeeded": "green",
    "ready": "green",
    "pending": "yellow",
    "bound": "yellow",
    "starting": "yellow",
    "stopping": "yellow",
    "not_ready": "yellow",
    "registering": "yellow",
    "cordoned": "yellow",
    "failed": "red",
    "lost": "red",
    "down": "red",
    "preempted": "magenta",
    "stopped": "dim",
}


def output_option(func: F) -> F:
    """Add ``-o/--output table|json|yaml`` to a command (passed as ``output``)."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice(OUTPUT_FORMATS, case_sensitive=False),
        default="table",
        show_default=True,
        help="Output format: a human table, or the API objects as JSON or YAML for scripts.",
    )(func)


def print_data(data: Any, fmt: str) -> None:
    """Print JSON-compatible ``data`` as JSON or YAML (``fmt`` is "json" or "yaml")."""
    if fmt.lower() == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)
    else:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def parse(model: type[M], data: Any) -> M:
    """Validate an API answer against its wire model.

    A mismatch means the server runs another version of Corral than this CLI; that is
    reported as one line rather than a pydantic traceback.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise CorralError(
            f"unexpected answer from the server ({model.__name__}.{where}: {first['msg']}); "
            "is the server running the same Corral version as this CLI?"
        ) from exc


def parse_items(model: type[M], data: Any, key: str) -> list[M]:
    """Validate a listing answer such as ``{"projects": [...]}``; return its items."""
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise CorralError(
            f"unexpected answer from the server (no {key!r} list); "
            "is the server running the same Corral version as this CLI?"
        )
    return [parse(model, item) for item in data[key]]


def listing(data: Any, model: type[M], key: str, output: str, empty: str | None = None) -> list[M]:
    """The items of a listing answer (``{"volumes": [...]}``) to print as a table.

    With ``-o json``/``yaml`` it prints the answer itself and returns nothing to
    tabulate; with no items it says so (``No <empty or key> found.``) and returns [].
    """
    items = parse_items(model, data, key)
    if output != "table":
        print_data(data[key], output)
        return []
    if not items:
        print_empty(empty or key)
    return items


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


@dataclass(frozen=True)
class Column:
    """One table column. ``styled`` colours its cells by state name on a terminal."""

    header: str
    styled: bool = False


def print_table(
    columns: Sequence[Column | str],
    rows: Sequence[Sequence[str]],
    *,
    terminal: bool | None = None,
) -> None:
    """Print ``rows`` under ``columns``: rich on a terminal, plain aligned text otherwise."""
    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    if terminal if terminal is not None else stdout_is_terminal():
        table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
        for col in cols:
            table.add_column(col.header, overflow="fold")
        for row in rows:
            table.add_row(
                *(
                    Text(cell, style=STATE_STYLES.get(cell, "")) if col.styled else Text(cell)
                    for col, cell in zip(cols, row, strict=True)
                )
            )
        Console(soft_wrap=False).print(table)
        return
    widths = [len(c.header) for c in cols]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for line in ([c.header for c in cols], *rows):
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def print_fields(fields: Sequence[tuple[str, str]]) -> None:
    """Print ``Label:  value`` lines with the values aligned (multi-line values indented)."""
    width = max((len(label) for label, _ in fields), default=0) + 2
    for label, value in fields:
        lines = value.splitlines() or [""]
        click.echo(f"{label + ':':<{width}}{lines[0]}".rstrip())
        for extra in lines[1:]:
            click.echo(f"{'':<{width}}{extra}".rstrip())


def print_empty(what: str) -> None:
    """Say that a listing is empty, on stderr so a pipe sees only the header or nothing."""
    click.echo(f"No {what} found.", err=True)


# ---------------------------------------------------------------- times


def as_utc(moment: datetime) -> datetime:
    """Times from the API are UTC; a naive one (no offset) is read as UTC too."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def age(moment: datetime | None, now: datetime) -> str:
    """How long ago ``moment`` was, compactly: ``42s``, ``5m3s``, ``2h10m``; ``-`` if None."""
    if moment is None:
        return "-"
    return format_duration((now - as_utc(moment)).total_seconds())


def relative(moment: datetime, now: datetime) -> str:
    """``5m3s ago`` for the past, ``in 23h59m`` for the future."""
    seconds = (as_utc(moment) - now).total_seconds()
    if seconds > 0:
        return f"in {format_duration(seconds)}"
    return f"{format_duration(-seconds)} ago"


def local_time(moment: datetime) -> str:
    """``2025-05-01 14:03:22`` in this machine's time zone."""
    return as_utc(moment).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def time_and_age(moment: datetime | None, now: datetime) -> str:
    """``2025-05-01 14:03:22 (5m3s ago)`` in local time, or ``-``."""
    if moment is None:
        return "-"
    return f"{local_time(moment)} ({relative(moment, now)})"


def number(value: float | None) -> str:
    """``2`` for 2.0, ``0.5`` for 0.5, ``-`` for None (CPU and GPU counts)."""
    return "-" if value is None else f"{value:g}"
