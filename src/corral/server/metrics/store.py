"""Monitoring history: raw samples for a short window, 1-minute and 1-hour rollups for
long ones, each kept only as long as its retention says.

Kept apart from the scheduler's store on purpose: samples arrive every second from
every node (hundreds of rows a second on a large cluster), losing some is harmless, and
their schema and retention have nothing to do with jobs. With SQLite they live in their
own file (``<data-dir>/metrics.db``), so ingesting them never queues behind — or holds
up — a scheduling cycle; with PostgreSQL they are tables of the same database unless
``metrics_database_url`` names another.

Tables hold plain numbers: time as integer epoch seconds (``t``), one row per (node,
GPU, second) with one column per metric; rollup rows carry their bucket's start and
``n``, the number of raw samples averaged, so that hours are averaged from minutes with
the right weights. Rollups run for buckets that ended at least `ROLLUP_LAG` seconds ago,
so batches that arrive a little late are still counted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
)

SCHEMA_VERSION = 3
ROLLUP_LAG = 120  # seconds after a bucket ends before it is rolled up

Resolution = Literal["raw", "1m", "1h"]
BUCKET_SECONDS: dict[Resolution, int] = {"raw": 1, "1m": 60, "1h": 3600}

GPU_METRICS = (
    "utilization_percent",
    "memory_utilization_percent",
    "memory_used_bytes",
    "memory_total_bytes",
    "temperature_celsius",
    "power_watts",
    "sm_clock_mhz",
    "pcie_tx_bytes_per_s",
    "pcie_rx_bytes_per_s",
)
HOST_METRICS = (
    "cpu_percent",
    "load1",
    "memory_used_bytes",
    "memory_total_bytes",
    "swap_used_bytes",
    "disk_read_bytes_per_s",
    "disk_write_bytes_per_s",
    "net_rx_bytes_per_s",
    "net_tx_bytes_per_s",
)
JOB_METRICS = ("cpu_percent", "memory_bytes")
PROJECT_METRICS = ("quota_gpus", "fair_share_gpus", "allocated_gpus", "pending_jobs")
USER_METRICS = ("allocated_gpus", "running_jobs")
CLUSTER_METRICS = (
    "utilization_percent",
    "gpus_total",
    "gpus_allocated",
    "gpus_unmanaged",
    "jobs_running",
    "jobs_pending",
)


@dataclass(frozen=True)
class Retention:
    """Seconds each resolution is kept (defaults: 3 hours, 8 days, 400 days)."""

    raw: float = 3 * 3600
    minute: float = 8 * 86400
    hour: float = 400 * 86400

    def of(self, resolution: Resolution) -> float:
        return {"raw": self.raw, "1m": self.minute, "1h": self.hour}[resolution]


@dataclass(frozen=True)
class _Family:
    """One kind of series (gpu, host, job): its key columns and metrics, three tables."""

    name: str
    keys: tuple[tuple[str, Any], ...]
    metrics: tuple[str, ...]

    def table_name(self, resolution: Resolution) -> str:
        return f"metrics_{self.name}_{resolution}"


FAMILIES = {
    "gpu": _Family("gpu", (("node", String(253)), ("gpu", Integer())), GPU_METRICS),
    "host": _Family("host", (("node", String(253)),), HOST_METRICS),
    "job": _Family(
        "job", (("job_id", BigInteger()), ("rank", Integer()), ("node", String(253))), JOB_METRICS
    ),
    "project": _Family("project", (("project", String(63)),), PROJECT_METRICS),
    "user": _Family("user", (("user", String(63)),), USER_METRICS),
    "cluster": _Family("cluster", (("cluster", String(16)),), CLUSTER_METRICS),
}
Family = Literal["gpu", "host", "job", "project", "user", "cluster"]


def _tables(metadata: MetaData) -> dict[tuple[str, Resolution], Table]:
    tables: dict[tuple[str, Resolution], Table] = {}
    for family in FAMILIES.values():
        for resolution in ("raw", "1m", "1h"):
            name = family.table_name(resolution)
            key_columns = [Column(k, type_, nullable=False) for k, type_ in family.keys]
            extra = [] if resolution == "raw" else [Column("n", Integer, nullable=False)]
            metric_columns = [Column(m, Float) for m in family.metrics]
            maxima = (
                [Column(f"{m}_max", Float) for m in family.metrics] if resolution != "raw" else []
            )
            tables[(family.name, resolution)] = Table(
                name,
                metadata,
                *key_columns,
                Column("t", BigInteger, nullable=False),
                *extra,
                *metric_columns,
                *maxima,
                Index(f"ix_{name}_key_t", *[k for k, _ in family.keys], "t"),
                Index(f"ix_{name}_t", "t"),
            )
    return tables


_metadata = MetaData()
TABLES = _tables(_metadata)
_state = Table(
    "metrics_state",
    _metadata,
    Column("key", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)


@dataclass(frozen=True)
class Series:
    """One series: its key (e.g. node and GPU), its metric, and (t, value) points."""

    key: dict[str, Any]
    metric: str
    resolution: Resolution
    points: list[tuple[int, float | None]]


class MetricsStore:
    """The history tables, on their own engine. Writes take turns on one lock."""

    def __init__(self, url: str, retention: Retention | None = None) -> None:
        self.url = url
        self.retention = retention or Retention()
        self._lock = threading.Lock()
        self.engine = self._engine(url)
        self._ensure_schema()

    @staticmethod
    def _engine(url: str) -> Engine:
        if not url.startswith("sqlite"):
            return create_engine(url, pool_pre_ping=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # losing the last second is fine here
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine

    def _ensure_schema(self) -> None:
        """Create the tables; a store written by another schema version is rebuilt (it
        holds only history, and saying so beats failing to start)."""
        with self._lock, self.engine.begin() as conn:
            _state.create(conn, checkfirst=True)
            version = conn.scalar(select(_state.c.value).where(_state.c.key == "schema"))
            if version is not None and version != SCHEMA_VERSION:
                for table in TABLES.values():
                    table.drop(conn, checkfirst=True)
                conn.execute(delete(_state))
            _metadata.create_all(conn)
            if version != SCHEMA_VERSION:
                conn.execute(insert(_state).values(key="schema", value=SCHEMA_VERSION))

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._lock, self.engine.begin() as conn:
            yield conn

    # ---------------------------------------------------------------- writing

    def add(self, family: Family, rows: Sequence[dict[str, Any]]) -> None:
        """Insert raw rows (keys, ``t`` and metric values; missing metrics are NULL)."""
        if not rows:
            return
        table = TABLES[(family, "raw")]
        names = [c.name for c in table.columns]
        full = [{n: row.get(n) for n in names} for row in rows]
        with self._write() as conn:
            conn.execute(insert(table), full)

    def roll_up(self, now: float) -> dict[str, int]:
        """Aggregate raw seconds into minutes and minutes into hours, for every bucket
        that ended `ROLLUP_LAG` seconds before ``now``. Returns rows written per table."""
        written: dict[str, int] = {}
        with self._write() as conn:
            for family in FAMILIES.values():
                steps: tuple[tuple[Resolution, Resolution], ...] = (("raw", "1m"), ("1m", "1h"))
                for src, dst in steps:
                    written[family.table_name(dst)] = self._roll(conn, family, src, dst, now)
        return written

    def _roll(
        self, conn: Connection, family: _Family, src: Resolution, dst: Resolution, now: float
    ) -> int:
        size = BUCKET_SECONDS[dst]
        mark_key = f"rolled:{family.table_name(dst)}"
        done = conn.scalar(select(_state.c.value).where(_state.c.key == mark_key))
        until = (int(now) - ROLLUP_LAG) // size * size  # buckets ending at or before this
        source, target = TABLES[(family.name, src)], TABLES[(family.name, dst)]
        if done is None:
            first = conn.scalar(select(func.min(source.c.t)))
            if first is None:
                return 0
            done = int(first) // size * size
        if until <= done:
            return 0
        keys = [source.c[k] for k, _ in family.keys]
        bucket = (source.c.t // size) * size  # integer division on both back-ends
        weight = source.c.n if src != "raw" else None
        columns: list[Any] = [*keys, bucket.label("t")]
        if weight is None:
            columns.append(func.count().label("n"))
            columns += [func.avg(source.c[m]).label(m) for m in family.metrics]
            columns += [func.max(source.c[m]).label(f"{m}_max") for m in family.metrics]
        else:
            columns.append(func.sum(weight).label("n"))
            columns += [
                (func.sum(source.c[m] * weight) / func.sum(weight)).label(m) for m in family.metrics
            ]
            columns += [func.max(source.c[f"{m}_max"]).label(f"{m}_max") for m in family.metrics]
        query = (
            select(*columns).where(source.c.t >= done, source.c.t < until).group_by(*keys, bucket)
        )
        rows = [dict(r._mapping) for r in conn.execute(query)]
        if rows:
            conn.execute(insert(target), rows)
        self._set(conn, mark_key, until)
        return len(rows)

    @staticmethod
    def _set(conn: Connection, key: str, value: int) -> None:
        updated = conn.execute(_state.update().where(_state.c.key == key).values(value=value))
        if updated.rowcount == 0:
            conn.execute(insert(_state).values(key=key, value=value))

    def expire(self, now: float) -> dict[str, int]:
        """Delete rows older than their resolution's retention. Returns rows deleted."""
        deleted: dict[str, int] = {}
        with self._write() as conn:
            for (family, resolution), table in TABLES.items():
                cutoff = int(now - self.retention.of(resolution))
                result = conn.execute(delete(table).where(table.c.t < cutoff))
                deleted[f"{family}_{resolution}"] = result.rowcount or 0
        return deleted

    # ---------------------------------------------------------------- reading

    def choose_resolution(
        self, start: float, end: float, now: float, family: Family | None = None
    ) -> Resolution:
        """The finest resolution that covers [start, end] within its retention and
        gives a chart a sensible number of points: raw up to about an hour, minutes up
        to about a week, hours beyond.

        With ``family``, the window counts from where that family's data begins: on a
        server that started ten minutes ago "the last day" is ten minutes of raw
        samples, not an empty chart waiting for the first 1-minute roll-up."""
        if family is not None:
            since = self.data_since(family)
            if since is not None and since > start:
                start = min(since, end)
        span = end - start
        if span <= 3900 and start >= now - self.retention.raw:
            return "raw"
        if span <= 8 * 86400 and start >= now - self.retention.minute:
            return "1m"
        return "1h"

    def data_since(self, family: Family) -> int | None:
        """The time of the oldest row of ``family`` at any resolution, None when empty
        (three index look-ups)."""
        with self.engine.connect() as conn:
            firsts = [
                conn.scalar(select(func.min(TABLES[(family, r)].c.t))) for r in ("raw", "1m", "1h")
            ]
        known = [int(t) for t in firsts if t is not None]
        return min(known) if known else None

    def query(
        self,
        family: Family,
        metrics: Iterable[str],
        start: float,
        end: float,
        resolution: Resolution,
        where: dict[str, Any] | None = None,
        in_: dict[str, Sequence[Any]] | None = None,
    ) -> list[Series]:
        """Series of ``metrics`` for every key matching ``where``/``in_`` in [start, end]."""
        spec = FAMILIES[family]
        wanted = [m for m in metrics]
        unknown = [m for m in wanted if m not in spec.metrics]
        if unknown:
            raise KeyError(", ".join(unknown))
        table = TABLES[(family, resolution)]
        keys = [k for k, _ in spec.keys]
        query = select(*[table.c[k] for k in keys], table.c.t, *[table.c[m] for m in wanted])
        query = query.where(table.c.t >= int(start), table.c.t <= int(end))
        for k, v in (where or {}).items():
            query = query.where(table.c[k] == v)
        for k, values in (in_ or {}).items():
            query = query.where(table.c[k].in_(list(values)))
        query = query.order_by(*[table.c[k] for k in keys], table.c.t)
        series: dict[tuple[Any, ...], dict[str, Series]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                key = tuple(row._mapping[k] for k in keys)
                per_metric = series.get(key)
                if per_metric is None:
                    per_metric = series[key] = {
                        m: Series(dict(zip(keys, key, strict=True)), m, resolution, [])
                        for m in wanted
                    }
                for m in wanted:
                    value = row._mapping[m]
                    per_metric[m].points.append((int(row._mapping["t"]), value))
        return [s for per_metric in series.values() for s in per_metric.values()]

    def count(self, family: Family, resolution: Resolution) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.scalar(select(func.count()).select_from(TABLES[(family, resolution)])) or 0
            )
