"""`corral.core.jobview`: one way to write a job's GPUs and run time, for the CLI and the
dashboard alike."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from corral.core.jobview import asked_text, gpus_text, run_time_text

GiB = 1024**3


@dataclass
class Asks:
    gpus: float = 1.0
    gpu_memory_bytes: int | None = None
    mig_profile: str | None = None
    workers: int = 1


@pytest.mark.parametrize(
    ("job", "ids", "text"),
    [
        (Asks(gpus=2), [0, 1], "2 (0,1)"),
        (Asks(gpus=2), [], "2"),  # not bound yet
        (Asks(gpus=0), [], "0"),
        (Asks(gpus=0.5), [3], "0.5 (3)"),
        (Asks(gpus=0.25), [], "0.25"),
        (Asks(gpus=0, gpu_memory_bytes=20 * GiB), [3], "20GiB (3)"),
        (Asks(gpus=0, mig_profile="1g.10gb"), [0], "mig 1g.10gb (0)"),
        (Asks(gpus=8, workers=4), [0, 1, 2, 3, 4, 5, 6, 7], "4x8"),  # per worker, elsewhere
        (Asks(gpus=0, mig_profile="3g.40gb", workers=2), [], "2xmig 3g.40gb"),
    ],
)
def test_what_a_job_asks_for_and_got(job: Asks, ids: list[int], text: str) -> None:
    assert gpus_text(job, ids) == text
    assert asked_text(job) == text.split(" (")[0]


T = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_run_time_until_the_end_or_now() -> None:
    now = T + timedelta(hours=1)
    assert run_time_text(None, None, False, now) == "-"  # not started
    assert run_time_text(T, None, False, now) == "1h"  # running: until now
    assert run_time_text(T, T + timedelta(seconds=95), True, now) == "1m35s"
    assert run_time_text(T, None, True, now) == "-"  # ended, no finish recorded
    # Times from the store may be naive (UTC); a clock step back never gives "-3s".
    assert run_time_text(T.replace(tzinfo=None), None, False, now) == "1h"
    assert run_time_text(T, T - timedelta(seconds=3), True, now) == "0s"
