"""`corral.cli.output`: tables on a terminal and in a pipe, detail blocks, and times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cli_fakes import NOW

from corral.cli.output import Column, age, print_fields, print_table, relative


def test_plain_tables_align_columns_and_never_truncate(capsys: pytest.CaptureFixture[str]) -> None:
    long = "waiting for 8 free GPUs on one node " * 4
    print_table(
        ("NAME", "REASON"), [["a", long.strip()], ["much-longer-name", "-"]], terminal=False
    )

    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "NAME              REASON",
        f"a                 {long.strip()}",
        "much-longer-name  -",
    ]


def test_terminal_tables_are_rich_tables(capsys: pytest.CaptureFixture[str]) -> None:
    print_table(
        (Column("NAME"), Column("STATE", styled=True)), [["train-1", "running"]], terminal=True
    )

    out = capsys.readouterr().out
    assert "NAME" in out and "STATE" in out
    assert "train-1" in out and "running" in out
    assert "─" in out  # the header rule of a rich table


def test_fields_align_and_indent_continuation_lines(capsys: pytest.CaptureFixture[str]) -> None:
    print_fields([("Name", "x"), ("GPU UUIDs", "GPU-1\nGPU-2"), ("Empty", "")])

    assert capsys.readouterr().out.splitlines() == [
        "Name:      x",
        "GPU UUIDs: GPU-1",
        "           GPU-2",
        "Empty:",
    ]


def test_ages_and_relative_times() -> None:
    assert age(NOW - timedelta(minutes=5, seconds=3), NOW) == "5m3s"
    assert age(None, NOW) == "-"
    assert relative(NOW - timedelta(hours=2), NOW) == "2h ago"
    assert relative(NOW + timedelta(days=1), NOW) == "in 1d"
    # A time without an offset is read as UTC, as the API sends UTC.
    naive = (NOW - timedelta(seconds=42)).replace(tzinfo=None)
    assert age(naive, NOW) == "42s"
    assert age(datetime(2025, 5, 1, 11, 59, 0, tzinfo=UTC), NOW) == "1m"
