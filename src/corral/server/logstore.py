"""Job output on the server's disk: one file per job attempt and worker, appended at
byte offsets.

``<root>/<job_id>/<attempt>.log`` holds rank 0's output (the output of every job that is
not a gang: the layout from before gangs), ``<attempt>.r<rank>.log`` that of a gang's
other workers; each has its own ``.dropped`` marker next to it.

Agents send output in chunks tagged with the byte offset in the job's output file. A
chunk is stored only from the server's current size onwards, so a chunk re-sent after a
lost answer is not stored twice, and a gap is answered with the offset to resume from.
Output beyond ``max_bytes`` is dropped after one marker line; the offset the agent sees
keeps advancing so it does not resend what was dropped.
"""

from __future__ import annotations

import threading
from pathlib import Path

TRUNCATION_MARKER = b"\n[corral: output truncated: the job wrote more than the log limit]\n"


class LogStore:
    """The logs under ``root``; ``max_bytes`` is the limit of each one (each worker's)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._locks: dict[tuple[int, int, int], threading.Lock] = {}
        self._guard = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)

    def path(self, job_id: int, attempt: int, rank: int = 0) -> Path:
        return self.root / str(job_id) / f"{_stem(attempt, rank)}.log"

    def _dropped_path(self, job_id: int, attempt: int, rank: int) -> Path:
        return self.root / str(job_id) / f"{_stem(attempt, rank)}.dropped"

    def _lock(self, job_id: int, attempt: int, rank: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((job_id, attempt, rank), threading.Lock())

    def next_offset(self, job_id: int, attempt: int, rank: int = 0) -> int:
        """The byte offset of the agent's output file the server has consumed up to."""
        path = self.path(job_id, attempt, rank)
        dropped = self._dropped_path(job_id, attempt, rank)
        if dropped.exists():
            return int(dropped.read_text() or 0)
        return path.stat().st_size if path.exists() else 0

    def append(self, job_id: int, attempt: int, offset: int, data: bytes, rank: int = 0) -> int:
        """Store ``data`` that starts at ``offset``; return the next offset to send from."""
        with self._lock(job_id, attempt, rank):
            have = self.next_offset(job_id, attempt, rank)
            if offset > have or offset + len(data) <= have:
                return have  # a gap (resend from `have`) or a duplicate: store nothing
            fresh = data[have - offset :]
            path = self.path(job_id, attempt, rank)
            dropped = self._dropped_path(job_id, attempt, rank)
            path.parent.mkdir(parents=True, exist_ok=True)
            size = path.stat().st_size if path.exists() else 0
            room = self.max_bytes - size
            end = have + len(fresh)
            with path.open("ab") as f:
                if room >= len(fresh) and not dropped.exists():
                    f.write(fresh)
                    return end
                if room > 0:
                    f.write(fresh[:room])
                f.write(TRUNCATION_MARKER)
            dropped.write_text(str(end))
            return end

    def read(
        self, job_id: int, attempt: int, offset: int, limit: int = 1 << 20, rank: int = 0
    ) -> bytes:
        """Up to ``limit`` stored bytes from ``offset`` (of the stored file)."""
        path = self.path(job_id, attempt, rank)
        if not path.exists():
            return b""
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(limit)

    def size(self, job_id: int, attempt: int, rank: int = 0) -> int:
        path = self.path(job_id, attempt, rank)
        return path.stat().st_size if path.exists() else 0


def _stem(attempt: int, rank: int) -> str:
    """``"3"`` for rank 0 (as before gangs), ``"3.r1"`` for rank 1."""
    return str(attempt) if rank == 0 else f"{attempt}.r{rank}"
