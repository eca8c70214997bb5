"""Monitoring history: raw samples, 1-minute and 1-hour rollups, retention, queries.

Time is given explicitly (epoch seconds), as a fake clock would: a day of samples is
written in well under a second.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from corral.server.metrics.store import ROLLUP_LAG, MetricsStore, Retention

T0 = 1_800_000_000 // 3600 * 3600  # an hour boundary
HOUR = 3600
DAY = 86400


@pytest.fixture
def store(database_url: str) -> Iterator[MetricsStore]:
    s = MetricsStore(database_url, Retention(raw=3 * HOUR, minute=2 * DAY, hour=10 * DAY))
    yield s
    s.dispose()


def gpu_rows(start: int, end: int, step: int, node: str = "n1", gpus: int = 2) -> list[dict]:
    """GPU g at second t: utilization (t // 60 % 60) + g, so each minute is constant."""
    return [
        {
            "node": node,
            "gpu": g,
            "t": t,
            "utilization_percent": float((t // 60) % 60 + g),
            "memory_used_bytes": float(1000 + g),
            "temperature_celsius": None,  # not available: stays None through rollups
        }
        for t in range(start, end, step)
        for g in range(gpus)
    ]


def test_raw_points_come_back_per_gpu_in_time_order(store: MetricsStore) -> None:
    store.add("gpu", gpu_rows(T0, T0 + 30, 1))
    series = store.query("gpu", ["utilization_percent"], T0, T0 + 3600, "raw", where={"node": "n1"})
    assert [s.key for s in series] == [{"node": "n1", "gpu": 0}, {"node": "n1", "gpu": 1}]
    assert series[1].points[:3] == [(T0, 1.0), (T0 + 1, 1.0), (T0 + 2, 1.0)]
    assert len(series[0].points) == 30
    only = store.query("gpu", ["temperature_celsius"], T0, T0 + 10, "raw", where={"gpu": 0})
    assert [v for _, v in only[0].points] == [None] * 11


def test_minutes_average_seconds_and_hours_average_minutes_weighted(store: MetricsStore) -> None:
    store.add("gpu", gpu_rows(T0, T0 + 2 * HOUR, 5))
    # Half of a third hour, with a different number of samples per minute (weights).
    store.add("gpu", gpu_rows(T0 + 2 * HOUR, T0 + 2 * HOUR + 1800, 30))
    written = store.roll_up(T0 + 3 * HOUR + ROLLUP_LAG)
    assert written["metrics_gpu_1m"] == 2 * (120 + 30)
    minutes = store.query("gpu", ["utilization_percent"], T0, T0 + 3 * HOUR, "1m", where={"gpu": 1})
    [m] = minutes
    assert m.points[0] == (T0, 1.0) and m.points[61] == (T0 + 61 * 60, 2.0)
    assert len(m.points) == 150
    hours = store.query("gpu", ["utilization_percent"], T0, T0 + 3 * HOUR, "1h", where={"gpu": 0})
    # Minute m of each hour has utilization m: the hour's mean is 29.5; the half hour's 14.5.
    assert hours[0].points == [(T0, 29.5), (T0 + HOUR, 29.5), (T0 + 2 * HOUR, 14.5)]
    assert store.query("gpu", ["temperature_celsius"], T0, T0 + HOUR, "1h")[0].points[0][1] is None


def test_rollups_wait_for_late_samples_and_never_count_twice(store: MetricsStore) -> None:
    store.add("gpu", gpu_rows(T0, T0 + 120, 1, gpus=1))
    assert store.roll_up(T0 + 120)["metrics_gpu_1m"] == 0  # too recent: samples may be late
    assert store.roll_up(T0 + 120 + ROLLUP_LAG)["metrics_gpu_1m"] == 2
    assert store.roll_up(T0 + 120 + ROLLUP_LAG + 5)["metrics_gpu_1m"] == 0
    assert store.count("gpu", "1m") == 2


def test_storage_stays_within_retention(store: MetricsStore) -> None:
    # Three days at one sample a minute, rolled up and expired every hour of it.
    counts = []
    for hour in range(72):
        start = T0 + hour * HOUR
        store.add("gpu", gpu_rows(start, start + HOUR, 60, gpus=1))
        store.add(
            "host",
            [{"node": "n1", "t": t, "cpu_percent": 5.0} for t in range(start, start + HOUR, 60)],
        )
        now = start + HOUR
        store.roll_up(now)
        store.expire(now)
        counts.append(
            (store.count("gpu", "raw"), store.count("gpu", "1m"), store.count("gpu", "1h"))
        )
    raw, minutes, hours = counts[-1]
    assert raw <= 3 * 60  # 3 hours of raw
    assert minutes <= 2 * 24 * 60  # 2 days of minutes
    assert hours == 72 - 1  # every whole hour rolled up except the last (lag); within 10 days
    assert max(c[0] for c in counts) <= 3 * 60
    assert store.count("host", "raw") <= 3 * 60


def test_the_finest_resolution_that_covers_the_range_is_chosen(store: MetricsStore) -> None:
    now = T0 + 10 * DAY
    assert store.choose_resolution(now - HOUR, now, now) == "raw"
    assert store.choose_resolution(now - DAY, now, now) == "1m"
    assert store.choose_resolution(now - 7 * DAY, now, now) == "1h"  # past the 2-day minutes
    assert store.choose_resolution(now - 5 * HOUR, now - 4 * HOUR, now) == "1m"  # raw expired


def test_a_young_store_answers_a_long_window_from_raw_samples(store: MetricsStore) -> None:
    # A server started ten minutes ago: no 1-minute roll-up covers "the last day" yet,
    # so the day is ten minutes of raw samples rather than an empty chart.
    now = T0 + 10 * 60
    assert store.data_since("cluster") is None
    assert store.choose_resolution(now - DAY, now, now, "cluster") == "1m"  # nothing at all
    store.add(
        "cluster",
        [{"cluster": "all", "t": t, "utilization_percent": 50.0} for t in range(T0, now, 15)],
    )
    assert store.data_since("cluster") == T0
    assert store.choose_resolution(now - DAY, now, now, "cluster") == "raw"
    assert store.choose_resolution(now - DAY, now, now) == "1m"  # without a family: the span
    [series] = store.query("cluster", ["utilization_percent"], now - DAY, now, "raw")
    assert len(series.points) == 40
    # Two days on, with 1-minute roll-ups going back two days, the day is minutes again.
    later = T0 + 2 * DAY
    store.add(
        "cluster",
        [{"cluster": "all", "t": t, "utilization_percent": 50.0} for t in range(now, later, 60)],
    )
    store.roll_up(later)
    store.expire(later)
    assert store.data_since("cluster") is not None
    assert store.data_since("cluster") <= later - DAY  # type: ignore[operator]
    assert store.choose_resolution(later - DAY, later, later, "cluster") == "1m"
    # Another family's data does not count.
    assert store.data_since("gpu") is None


def test_unknown_metrics_are_refused(store: MetricsStore) -> None:
    with pytest.raises(KeyError, match="bogus"):
        store.query("gpu", ["bogus"], T0, T0 + 1, "raw")


def test_a_store_of_another_schema_version_is_rebuilt(database_url: str) -> None:
    from sqlalchemy import update

    from corral.server.metrics import store as module

    first = MetricsStore(database_url)
    first.add("gpu", gpu_rows(T0, T0 + 10, 1, gpus=1))
    with first.engine.begin() as conn:
        conn.execute(update(module._state).where(module._state.c.key == "schema").values(value=0))
    first.dispose()
    second = MetricsStore(database_url)
    assert second.count("gpu", "raw") == 0
    second.dispose()
