"""Per-user disk usage: ownership by two uids, hard links once, symlinks and other
filesystems not entered, unreadable directories skipped and counted, a low-priority
scanning thread that stops at once."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.agent import diskusage
from corral.agent.diskusage import (
    IOPRIO_CLASS_IDLE,
    DiskUsageScanner,
    get_thread_ioprio,
)
from corral.core.telemetry import UserDiskUsage

ALICE, BOB = 41001, 41002  # uids no real account has
NAMES = {ALICE: "alice", BOB: "bob", 0: "root"}

needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="NOT RUN: per-user disk usage needs files owned by two uids, and only root "
    "can chown them; run the suite as root (the CI and dev machines do) to test it",
)


def allocated(path: Path) -> int:
    return path.lstat().st_blocks * 512


def make(path: Path, size: int, uid: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    os.chown(path, uid, uid)
    return path


def by_user(rows: list[UserDiskUsage], path: Path) -> dict[str, tuple[int, int]]:
    return {r.user: (r.used_bytes, r.files) for r in rows if r.path == str(path)}


def scanner(paths: list[Path], **kwargs: Any) -> DiskUsageScanner:
    return DiskUsageScanner(
        [str(p) for p in paths],
        uid_name=lambda uid: NAMES.get(uid, str(uid)),
        **kwargs,
    )


@needs_root
def test_usage_per_user_with_hard_links_once_and_symlinks_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "home"
    outside = tmp_path / "elsewhere"
    big_outside = make(outside / "big.bin", 4 << 20, ALICE)
    (root / "alice" / "data").mkdir(parents=True)
    (root / "bob").mkdir(parents=True)
    for directory in (root / "alice", root / "alice" / "data"):
        os.chown(directory, ALICE, ALICE)
    os.chown(root / "bob", BOB, BOB)
    a1 = make(root / "alice" / "a1.bin", 300_000, ALICE)
    a2 = make(root / "alice" / "data" / "a2.bin", 50_000, ALICE)
    linked = make(root / "alice" / "data" / "linked.bin", 200_000, ALICE)
    os.link(linked, root / "alice" / "linked-again.bin")  # the same inode: once
    os.link(linked, root / "bob" / "alice-linked.bin")  # still alice's inode
    b1 = make(root / "bob" / "b1.bin", 120_000, BOB)
    sparse = root / "bob" / "sparse.bin"
    with open(sparse, "wb") as f:
        f.truncate(1 << 30)  # 1 GiB apparent, nothing allocated
    os.chown(sparse, BOB, BOB)
    # symlinks to a big file and to a directory outside: the links count, not the targets
    (root / "bob" / "to-big").symlink_to(big_outside)
    (root / "bob" / "to-dir").symlink_to(outside, target_is_directory=True)
    for link in ("to-big", "to-dir"):
        os.lchown(root / "bob" / link, BOB, BOB)

    rows = scanner([root]).scan_once()
    usage = by_user(rows, root)
    alice_bytes = sum(
        allocated(p)
        for p in (a1, a2, linked, root / "alice", root / "alice" / "data")  # dirs' own blocks
    )
    bob_bytes = sum(
        allocated(p)
        for p in (b1, sparse, root / "bob", root / "bob" / "to-big", root / "bob" / "to-dir")
    )
    assert usage["alice"] == (alice_bytes, 3)  # a1, a2, linked (three names, one inode)
    assert usage["bob"] == (bob_bytes, 4)  # b1, sparse, two symlinks
    assert usage["bob"][0] < 1 << 20  # neither the sparse size nor the symlinks' targets
    assert usage["root"] == (allocated(root), 0)  # the top directory itself
    assert all(r.scanned_at.tzinfo is not None for r in rows)


@needs_root
def test_unknown_uids_show_as_numbers(tmp_path: Path) -> None:
    make(tmp_path / "top" / "f", 10_000, 3999999)
    rows = DiskUsageScanner([str(tmp_path / "top")]).scan_once()
    assert "3999999" in by_user(rows, tmp_path / "top")


@needs_root
def test_another_filesystem_mounted_below_is_not_entered(tmp_path: Path) -> None:
    root = tmp_path / "scratch"
    mnt = root / "mnt"
    mnt.mkdir(parents=True)
    make(root / "mine.bin", 100_000, ALICE)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "corral-test-tmpfs", str(mnt)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        make(mnt / "other-fs.bin", 8 << 20, BOB)
        usage = by_user(scanner([root]).scan_once(), root)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert "bob" not in usage
    assert usage["alice"][1] == 1


def test_unreadable_directories_are_skipped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root reads every directory, so the refusal is simulated at scandir.
    root = tmp_path / "tree"
    (root / "open").mkdir(parents=True)
    (root / "locked" / "deeper").mkdir(parents=True)
    (root / "open" / "f").write_bytes(b"x" * 5000)
    (root / "locked" / "secret").write_bytes(b"x" * 5000)
    real_scandir = os.scandir

    def scandir(path: str) -> object:
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(diskusage.os, "scandir", scandir)
    scan = scanner([root])
    rows = scan.scan_once()
    (stats,) = scan.stats()
    assert stats.skipped_dirs == 1
    assert stats.error is None
    assert sum(r.files for r in rows) == 1  # open/f only


def test_a_missing_path_is_reported_and_others_still_scanned(tmp_path: Path) -> None:
    (tmp_path / "there").mkdir()
    (tmp_path / "there" / "f").write_bytes(b"x")
    (tmp_path / "file").write_bytes(b"x")
    scan = scanner([tmp_path / "missing", tmp_path / "there", tmp_path / "file"])
    rows = scan.scan_once()
    assert {r.path for r in rows} == {str(tmp_path / "there")}
    errors = [s.error for s in scan.stats()]
    assert errors[0] is not None and errors[1] is None and errors[2] == "not a directory"


@pytest.fixture
def big_tree(tmp_path: Path) -> Path:
    root = tmp_path / "big"
    for d in range(20):
        sub = root / f"d{d}"
        sub.mkdir(parents=True)
        for f in range(20):
            (sub / f"f{f}").write_bytes(b"x")
    return root


@pytest.fixture
def running() -> Iterator[list[DiskUsageScanner]]:
    started: list[DiskUsageScanner] = []
    yield started
    for scan in started:
        scan.stop()


def test_thread_publishes_passes_and_rescans_every_period(
    big_tree: Path, running: list[DiskUsageScanner]
) -> None:
    scan = scanner([big_tree], period=0.05)
    running.append(scan)
    assert scan.latest() == []
    scan.start()
    deadline = time.monotonic() + 10
    while scan.passes < 1:
        assert time.monotonic() < deadline, "no pass completed"
        time.sleep(0.01)
    assert sum(r.files for r in scan.latest()) == 400
    (big_tree / "new").write_bytes(b"y")
    first = scan.passes
    while scan.passes < first + 2:
        assert time.monotonic() < deadline, "no rescan"
        time.sleep(0.01)
    assert sum(r.files for r in scan.latest()) == 401


def test_stop_returns_quickly_mid_pass_and_while_waiting(
    big_tree: Path, running: list[DiskUsageScanner]
) -> None:
    # Paced hard: a pause of ~1000x the work after every 5 entries: the pass would take
    # minutes, so only the stop Event can end it in time.
    scan = scanner([big_tree], chunk=5, busy_fraction=0.001, min_pause=5.0)
    running.append(scan)
    scan.start()
    time.sleep(0.3)
    assert scan.passes == 0
    started = time.monotonic()
    assert scan.stop()
    assert time.monotonic() - started < 1.0
    assert scan.latest() == []  # a pass cut short publishes nothing

    idle = scanner([big_tree], period=3600)
    running.append(idle)
    idle.start()
    while idle.passes < 1:
        time.sleep(0.01)
    started = time.monotonic()
    assert idle.stop()  # waiting for the next period
    assert time.monotonic() - started < 1.0


def test_pacing_sleeps_between_chunks(big_tree: Path) -> None:
    # 420 entries in chunks of 50 with at least 20 ms after each: at least 8 pauses
    scan = scanner([big_tree], chunk=50, min_pause=0.02)
    started = time.monotonic()
    scan.scan_once()
    assert time.monotonic() - started >= 8 * 0.02


def test_only_the_scanning_thread_gets_low_cpu_and_io_priority(
    big_tree: Path, running: list[DiskUsageScanner]
) -> None:
    me = threading.get_native_id()
    nice_before = os.getpriority(os.PRIO_PROCESS, me)
    try:
        io_before = get_thread_ioprio(me)
    except NotImplementedError:
        io_before = None
    scan = scanner([big_tree], period=3600)
    running.append(scan)
    scan.start()
    deadline = time.monotonic() + 10
    while scan.passes < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    tid = scan.native_id
    assert tid is not None and tid != os.getpid()
    assert os.getpriority(os.PRIO_PROCESS, tid) == 19
    assert os.getpriority(os.PRIO_PROCESS, me) == nice_before  # this thread: untouched
    assert os.getpriority(os.PRIO_PROCESS, os.getpid()) == nice_before  # the main thread
    if io_before is not None:
        assert get_thread_ioprio(tid)[0] == IOPRIO_CLASS_IDLE
        assert get_thread_ioprio(me) == io_before
        with contextlib.suppress(NotImplementedError):
            assert get_thread_ioprio(os.getpid()) == get_thread_ioprio(me)
