from __future__ import annotations

import pytest

from corral.core.errors import InvalidRequest
from corral.core.names import check_name, node_name_from_hostname
from corral.core.quantities import format_bytes, format_duration, parse_memory


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16GiB", 16 << 30),
        ("16G", 16 << 30),
        ("512MiB", 512 << 20),
        ("1.5GiB", 3 << 29),
        ("1024", 1024),
        ("2gb", 2_000_000_000),
        ("1 TiB", 1 << 40),
    ],
)
def test_parse_memory(text: str, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "16 parsecs", "-1G", "1e3G", "ten"])
def test_parse_memory_refuses_nonsense(text: str) -> None:
    with pytest.raises(InvalidRequest, match="is not a size"):
        parse_memory(text)


def test_format() -> None:
    assert format_bytes(80 << 30) == "80GiB"
    assert format_bytes(3 << 29) == "1.5GiB"
    assert format_duration(3725) == "1h2m"
    assert [format_duration(v) for v in (59, 60, 303, 3600, 28800, 86400, 97200)] == [
        "59s",
        "1m",
        "5m3s",
        "1h",
        "8h",
        "1d",
        "1d3h",
    ]
    assert format_duration(None) == "-"


@pytest.mark.parametrize("name", ["a", "train-1", "x" * 63, "0abc"])
def test_good_names(name: str) -> None:
    assert check_name(name, what="job") == name


@pytest.mark.parametrize(
    "name", ["", "A", "-a", "a-", "a/b", "..", "a b", "a;b", "x" * 64, "a\nb", "é"]
)
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidRequest):
        check_name(name, what="job")


def test_node_name_from_hostname() -> None:
    assert node_name_from_hostname("GPU-Box_01.lab..local") == "gpu-box-01.lab.local"
