"""Job output on the server's disk: one file per job attempt, appended at byte offsets.

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
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._locks: dict[tuple[int, int], threading.Lock] = {}
        self._guard = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)

    def path(self, job_id: int, attempt: int) -> Path:
        return self.root / str(job_id) / f"{attempt}.log"

    def _dropped_path(self, job_id: int, attempt: int) -> Path:
        return self.root / str(job_id) / f"{attempt}.dropped"

    def _lock(self, job_id: int, attempt: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((job_id, attempt), threading.Lock())

    def next_offset(self, job_id: int, attempt: int) -> int:
        """The byte offset of the agent's output file the server has consumed up to."""
        path = self.path(job_id, attempt)
        dropped = self._dropped_path(job_id, attempt)
        if dropped.exists():
            return int(dropped.read_text() or 0)
        return path.stat().st_size if path.exists() else 0

    def append(self, job_id: int, attempt: int, offset: int, data: bytes) -> int:
        """Store ``data`` that starts at ``offset``; return the next offset to send from."""
        with self._lock(job_id, attempt):
            have = self.next_offset(job_id, attempt)
            if offset > have or offset + len(data) <= have:
                return have  # a gap (resend from `have`) or a duplicate: store nothing
            fresh = data[have - offset :]
            path = self.path(job_id, attempt)
            path.parent.mkdir(parents=True, exist_ok=True)
            size = path.stat().st_size if path.exists() else 0
            room = self.max_bytes - size
            end = have + len(fresh)
            with path.open("ab") as f:
                if room >= len(fresh) and not self._dropped_path(job_id, attempt).exists():
                    f.write(fresh)
                    return end
                if room > 0:
                    f.write(fresh[:room])
                f.write(TRUNCATION_MARKER)
            self._dropped_path(job_id, attempt).write_text(str(end))
            return end

    def read(self, job_id: int, attempt: int, offset: int, limit: int = 1 << 20) -> bytes:
        """Up to ``limit`` stored bytes from ``offset`` (of the stored file)."""
        path = self.path(job_id, attempt)
        if not path.exists():
            return b""
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(limit)

    def size(self, job_id: int, attempt: int) -> int:
        path = self.path(job_id, attempt)
        return path.stat().st_size if path.exists() else 0
