"""Host metrics: rates, filesystems, sensors and power from fake /proc and /sys trees;
per-job usage from a fake process table and from a real job session; the cost of a
sample with ~200 processes on the host."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from corral.agent.hostmetrics import HostCollector, parse_stat

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def proc_stat_line(
    pid: int,
    *,
    ppid: int = 1,
    session: int = 0,
    own: tuple[int, int] = (0, 0),
    children: tuple[int, int] = (0, 0),
    start: int = 100,
    rss: int = 0,
    comm: str = "cmd",
) -> str:
    fields = ["S", ppid, session, session, 0, -1, 0, 0, 0, 0, 0, *own, *children]
    fields += [20, 0, 1, 0, start, 1 << 20, rss] + [0] * 27
    return f"{pid} ({comm}) " + " ".join(str(f) for f in fields) + "\n"


class FakeHost:
    """A fake /proc and /sys: counters the tests set, a clock they move."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.sys = root / "sys"
        self.clock = Clock()
        for disk in ("sda", "nvme0n1"):
            (self.sys / "block" / disk / "device").mkdir(parents=True)
        (self.sys / "block" / "loop0").mkdir(parents=True)  # no device: virtual
        (self.sys / "block" / "dm-0").mkdir(parents=True)
        (self.sys / "class" / "net" / "eth0" / "device").mkdir(parents=True)
        (self.sys / "class" / "net" / "lo").mkdir(parents=True)
        (self.sys / "class" / "net" / "docker0").mkdir(parents=True)
        write(self.proc / "loadavg", "1.50 0.80 0.40 2/300 4242\n")
        write(
            self.proc / "meminfo",
            "MemTotal:       16000000 kB\nMemFree:         1000000 kB\n"
            "MemAvailable:   12000000 kB\nBuffers:          100000 kB\n"
            "SwapTotal:       2000000 kB\nSwapFree:        1500000 kB\n",
        )
        write(self.proc / "self" / "mounts", "/dev/sda1 / ext4 rw 0 0\n")
        self.set_counters(cpu=(100, 0, 50, 800, 50), disk={}, net={})

    def set_counters(
        self,
        *,
        cpu: tuple[int, ...],
        disk: dict[str, tuple[int, int]],
        net: dict[str, tuple[int, int]],
    ) -> None:
        values = " ".join(str(v) for v in (*cpu, 0, 0, 0, 0, 0)[:10])
        write(self.proc / "stat", f"cpu  {values}\ncpu0 {values}\nintr 1 2 3\n")
        lines = [
            f"   8       0 {name} 10 0 {read} 5 20 0 {written} 7 0 9 12 0 0 0 0\n"
            for name, (read, written) in disk.items()
        ]
        write(self.proc / "diskstats", "".join(lines))
        header = (
            "Inter-|   Receive                                                |  Transmit\n"
            " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets"
            " errs drop fifo colls carrier compressed\n"
        )
        rows = [
            f"{name:>6}: {rx} 1 0 0 0 0 0 0 {tx} 1 0 0 0 0 0 0\n" for name, (rx, tx) in net.items()
        ]
        write(self.proc / "net" / "dev", header + "".join(rows))

    def collector(
        self,
        statvfs: Callable[[str], os.statvfs_result] | None = None,
        **kwargs: Any,
    ) -> HostCollector:
        return HostCollector(
            proc_root=self.proc,
            sys_root=self.sys,
            clock=self.clock,
            statvfs=statvfs or fake_statvfs,
            **kwargs,
        )


def fake_statvfs(path: str) -> os.statvfs_result:
    # f_bsize f_frsize f_blocks f_bfree f_bavail f_files f_ffree f_favail f_flag f_namemax
    return os.statvfs_result((4096, 4096, 1000, 250, 200, 0, 0, 0, 0, 255))


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path)


# ---------------------------------------------------------------------- rates


def test_rates_come_from_two_calls_over_physical_devices_only(host: FakeHost) -> None:
    host.set_counters(
        cpu=(100, 0, 50, 800, 50),
        disk={"sda": (1000, 2000), "sda1": (1000, 2000), "loop0": (0, 0), "nvme0n1": (0, 0)},
        net={"lo": (0, 0), "eth0": (5000, 7000), "docker0": (0, 0)},
    )
    collector = host.collector()
    first = collector.sample()
    assert first.cpu_percent is None  # no baseline yet: None, not 0
    assert first.disk_read_bytes_per_s is None
    assert first.disk_write_bytes_per_s is None
    assert first.net_rx_bytes_per_s is None
    assert first.net_tx_bytes_per_s is None

    host.clock.now += 2.0
    host.set_counters(
        # 300 more ticks, of which 100 idle+iowait: 200/300 busy
        cpu=(250, 0, 100, 880, 70),
        # sda: +400 sectors read, +1000 written; nvme0n1: +600 read. The partition, the
        # loop device (no device behind it) are not counted again.
        disk={
            "sda": (1400, 3000),
            "sda1": (1400, 3000),
            "loop0": (99999, 99999),
            "nvme0n1": (600, 0),
        },
        # eth0: +2000 rx, +4000 tx; loopback and the bridge count nothing
        net={"lo": (10**9, 10**9), "eth0": (7000, 11000), "docker0": (10**6, 10**6)},
    )
    second = collector.sample()
    assert second.cpu_percent == pytest.approx(200 / 300 * 100)
    assert second.disk_read_bytes_per_s == pytest.approx(1000 * 512 / 2)
    assert second.disk_write_bytes_per_s == pytest.approx(1000 * 512 / 2)
    assert second.net_rx_bytes_per_s == pytest.approx(1000.0)
    assert second.net_tx_bytes_per_s == pytest.approx(2000.0)

    # A device that appears later adds nothing until it has a baseline; a counter
    # reset (a re-plugged disk) gives no negative rate.
    host.clock.now += 1.0
    host.set_counters(
        cpu=(250, 0, 100, 980, 70),
        disk={"sda": (0, 0), "nvme0n1": (600, 0)},
        net={"eth0": (7000, 11000), "eth1": (10**9, 10**9)},
    )
    (host.sys / "class" / "net" / "eth1" / "device").mkdir(parents=True)
    third = collector.sample()
    assert third.cpu_percent == 0.0
    assert third.disk_read_bytes_per_s == 0.0
    assert third.net_rx_bytes_per_s == 0.0


def test_memory_swap_load_and_cpu_count(host: FakeHost) -> None:
    sample = host.collector().sample()
    assert sample.memory_total_bytes == 16000000 * 1024
    assert sample.memory_used_bytes == (16000000 - 12000000) * 1024  # total - available
    assert sample.swap_total_bytes == 2000000 * 1024
    assert sample.swap_used_bytes == 500000 * 1024
    assert sample.load1 == 1.5
    assert sample.cpu_count == os.cpu_count()
    assert sample.temperatures_celsius is None  # no sensors exposed: None, not {}
    assert sample.power_watts is None


def test_container_interfaces_only_count_all_but_loopback(host: FakeHost) -> None:
    (host.sys / "class" / "net" / "eth0" / "device").rmdir()  # a container's veth
    host.set_counters(cpu=(1, 0, 1, 1, 0), disk={}, net={"lo": (0, 0), "eth0": (0, 0)})
    collector = host.collector()
    collector.sample()
    host.clock.now += 1
    host.set_counters(cpu=(1, 0, 1, 2, 0), disk={}, net={"lo": (500, 500), "eth0": (100, 300)})
    sample = collector.sample()
    assert (sample.net_rx_bytes_per_s, sample.net_tx_bytes_per_s) == (100.0, 300.0)


# ---------------------------------------------------------------------- filesystems


MOUNTS = """\
proc /proc proc rw 0 0
sysfs /sys sysfs rw 0 0
devtmpfs /dev devtmpfs rw 0 0
tmpfs /dev/shm tmpfs rw 0 0
tmpfs /run tmpfs rw 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw 0 0
/dev/sda1 / ext4 rw 0 0
/dev/sda1 /var/lib/docker/bind ext4 rw 0 0
overlay /var/lib/docker/overlay2/abc/merged overlay rw 0 0
/dev/loop3 /snap/core/1234 squashfs ro 0 0
/dev/nvme0n1p1 /data xfs rw 0 0
/dev/sdb1 /mnt/my\\040disk ext4 rw 0 0
nas:/export/home /home nfs4 rw 0 0
lxcfs /proc/cpuinfo fuse.lxcfs rw 0 0
"""


def test_filesystems_skip_pseudo_and_network_ones_and_dedupe_devices(host: FakeHost) -> None:
    write(host.proc / "self" / "mounts", MOUNTS)
    asked: list[str] = []

    def statvfs(path: str) -> os.statvfs_result:
        asked.append(path)
        return fake_statvfs(path)

    sample = host.collector(statvfs=statvfs).sample()
    assert [fs.mount for fs in sample.filesystems] == ["/", "/data", "/mnt/my disk"]
    assert sorted(asked) == ["/", "/data", "/mnt/my disk"]  # no statvfs on NFS or proc
    root = sample.filesystems[0]
    assert root.total_bytes == 1000 * 4096
    assert root.used_bytes == 750 * 4096

    with_network = host.collector(include_network_filesystems=True).sample()
    assert "/home" in [fs.mount for fs in with_network.filesystems]


def test_mount_table_is_reread_only_every_mounts_interval(host: FakeHost) -> None:
    collector = host.collector(mounts_interval=30.0)
    assert [fs.mount for fs in collector.sample().filesystems] == ["/"]
    write(host.proc / "self" / "mounts", "/dev/sda1 / ext4 rw 0 0\n/dev/sdb1 /data ext4 rw 0 0\n")
    host.clock.now += 10
    assert [fs.mount for fs in collector.sample().filesystems] == ["/"]
    host.clock.now += 25
    assert [fs.mount for fs in collector.sample().filesystems] == ["/", "/data"]


def test_unreadable_filesystem_is_left_out(host: FakeHost) -> None:
    write(host.proc / "self" / "mounts", "/dev/sda1 / ext4 rw 0 0\n/dev/sdb1 /gone ext4 rw 0 0\n")

    def statvfs(path: str) -> os.statvfs_result:
        if path == "/gone":
            raise PermissionError(13, "denied")
        return fake_statvfs(path)

    assert [fs.mount for fs in host.collector(statvfs=statvfs).sample().filesystems] == ["/"]


# ---------------------------------------------------------------------- sensors and power


def test_temperatures_from_hwmon_with_labels_and_duplicate_chips(host: FakeHost) -> None:
    hwmon = host.sys / "class" / "hwmon"
    for index, (chip, package) in enumerate([("coretemp", 0), ("coretemp", 1)]):
        base = hwmon / f"hwmon{index}"
        write(base / "name", f"{chip}\n")
        write(base / "temp1_label", f"Package id {package}\n")
        write(base / "temp1_input", f"{50000 + package * 1000}\n")
        write(base / "temp1_max", "90000\n")
        write(base / "temp2_label", "Core 0\n")
        write(base / "temp2_input", "47500\n")
    write(hwmon / "hwmon2" / "name", "nvme\n")
    write(hwmon / "hwmon2" / "temp1_input", "38850\n")
    collector = host.collector(sensors_interval=5.0)
    assert collector.sample().temperatures_celsius == {
        "coretemp/Package id 0": 50.0,
        "coretemp/Core 0": 47.5,
        "coretemp#1/Package id 1": 51.0,
        "coretemp#1/Core 0": 47.5,
        "nvme/temp1": 38.85,
    }
    # readings are reused for sensors_interval seconds, then read again
    write(hwmon / "hwmon2" / "temp1_input", "40000\n")
    host.clock.now += 1
    assert (collector.sample().temperatures_celsius or {})["nvme/temp1"] == 38.85
    host.clock.now += 5
    assert (collector.sample().temperatures_celsius or {})["nvme/temp1"] == 40.0


def test_thermal_zones_are_the_fallback(host: FakeHost) -> None:
    write(host.sys / "class" / "thermal" / "thermal_zone0" / "type", "acpitz\n")
    write(host.sys / "class" / "thermal" / "thermal_zone0" / "temp", "27800\n")
    write(host.sys / "class" / "thermal" / "cooling_device0" / "type", "Processor\n")
    assert host.collector().sample().temperatures_celsius == {"acpitz/thermal_zone0": 27.8}


def test_power_from_rapl_energy_counters_as_a_rate(host: FakeHost) -> None:
    powercap = host.sys / "class" / "powercap"
    zones = {
        "intel-rapl:0": "package-0",
        "intel-rapl:0:0": "core",  # part of the package: not added again
        "intel-rapl:0:1": "dram",
        "intel-rapl:1": "package-1",
        "intel-rapl-mmio:0": "package-0",  # the same package through MMIO
    }
    range_uj = 262143328850
    for zone, name in zones.items():
        write(powercap / zone / "name", f"{name}\n")
        write(powercap / zone / "max_energy_range_uj", f"{range_uj}\n")
        write(powercap / zone / "energy_uj", "1000000\n")
    collector = host.collector()
    assert collector.sample().power_watts is None  # first reading: no rate yet
    host.clock.now += 2.0
    write(powercap / "intel-rapl:0" / "energy_uj", f"{1000000 + 200_000_000}\n")  # 100 W
    write(powercap / "intel-rapl:0:1" / "energy_uj", f"{1000000 + 20_000_000}\n")  # 10 W
    write(powercap / "intel-rapl:0:0" / "energy_uj", f"{1000000 + 150_000_000}\n")
    # package-1 wrapped around: 100 W too
    write(powercap / "intel-rapl:1" / "energy_uj", f"{1000000 + 200_000_000 - range_uj}\n")
    write(powercap / "intel-rapl-mmio:0" / "energy_uj", f"{10**9}\n")
    assert collector.sample().power_watts == pytest.approx(210.0)


def test_acpi_power_meter_wins_over_rapl(host: FakeHost) -> None:
    write(host.sys / "class" / "hwmon" / "hwmon0" / "name", "power_meter\n")
    write(host.sys / "class" / "hwmon" / "hwmon0" / "power1_average", "412000000\n")
    write(host.sys / "class" / "powercap" / "intel-rapl:0" / "name", "package-0\n")
    write(host.sys / "class" / "powercap" / "intel-rapl:0" / "energy_uj", "5\n")
    assert host.collector().sample().power_watts == 412.0


# ---------------------------------------------------------------------- per-job usage


def test_parse_stat_with_spaces_and_parentheses_in_the_command() -> None:
    line = proc_stat_line(7, ppid=3, session=5, own=(10, 2), children=(1, 1), start=99, rss=4)
    parsed = parse_stat(line.replace("(cmd)", "(my (odd) cmd)").encode())
    assert parsed is not None
    assert (parsed.ppid, parsed.session, parsed.own_ticks, parsed.child_ticks) == (3, 5, 12, 2)
    assert (parsed.start, parsed.rss_pages) == (99, 4)
    assert parse_stat(b"garbage") is None


def set_processes(host: FakeHost, lines: dict[int, str]) -> None:
    for old in host.proc.iterdir():
        if old.name.isdigit():
            (old / "stat").unlink()
            old.rmdir()
    for pid, line in lines.items():
        write(host.proc / str(pid) / "stat", line)


def test_job_cpu_counts_reaped_children_once_and_memory_is_summed(host: FakeHost) -> None:
    collector = host.collector(jobs_interval=5.0)
    jobs = {100: (42, 1)}
    set_processes(
        host,
        {
            100: proc_stat_line(100, session=100, own=(6, 4), rss=100),  # the shim
            101: proc_stat_line(101, ppid=100, session=100, own=(400, 100), rss=5000),
            102: proc_stat_line(102, ppid=101, session=100, own=(40, 10), rss=300),
            104: proc_stat_line(104, ppid=1, session=100, own=(20, 0), rss=10),  # orphan
            200: proc_stat_line(200, session=200, own=(1000, 0), rss=7000),  # not a job
        },
    )
    first = collector.sample(jobs).jobs
    assert len(first) == 1
    assert (first[0].job_id, first[0].rank, first[0].processes) == (42, 1, 5 - 1)
    assert first[0].cpu_percent is None  # the first walk is the baseline
    assert first[0].memory_bytes == (100 + 5000 + 300 + 10) * PAGE

    host.clock.now += 5.0
    set_processes(
        host,
        {
            100: proc_stat_line(100, session=100, own=(6, 4), rss=100),
            # +200 of its own, and 102 (80 ticks in all) was reaped into its cutime
            101: proc_stat_line(101, ppid=100, session=100, own=(550, 150), children=(70, 10)),
            # started since: all of its 40 ticks are new
            103: proc_stat_line(103, ppid=101, session=100, own=(30, 10), start=900, rss=20),
            # 104 ended and its parent is outside the session: its last ticks are lost
            200: proc_stat_line(200, session=200, own=(2000, 0), rss=7000),
        },
    )
    second = collector.sample(jobs).jobs
    # 0 (shim) + 200 + 80 (101) - 50 (102's share counted in the first walk) + 40 (103)
    ticks = 200 + 80 - 50 + 40
    assert second[0].cpu_percent == pytest.approx(100.0 * ticks / CLK_TCK / 5.0)
    assert second[0].processes == 3
    assert second[0].memory_bytes == (100 + 0 + 20) * PAGE


def test_job_walk_runs_every_jobs_interval_and_early_for_a_new_session(host: FakeHost) -> None:
    collector = host.collector(jobs_interval=5.0)
    set_processes(host, {100: proc_stat_line(100, session=100, own=(0, 0), rss=1)})
    collector.sample({100: (1, 0)})
    set_processes(
        host,
        {
            100: proc_stat_line(100, session=100, own=(50, 0), rss=2),
            300: proc_stat_line(300, session=300, own=(10, 0), start=500, rss=3),
        },
    )
    host.clock.now += 1.0
    reused = collector.sample({100: (1, 0)}).jobs  # between walks: the last walk's numbers
    assert reused[0].memory_bytes == 1 * PAGE
    assert reused[0].cpu_percent is None
    # a session the last walk was not asked about: walked at once
    both = {job.job_id: job for job in collector.sample({100: (1, 0), 300: (3, 0)}).jobs}
    assert both[1].memory_bytes == 2 * PAGE
    assert both[1].cpu_percent == pytest.approx(100.0 * 50 / CLK_TCK / 1.0)
    assert both[3].cpu_percent == pytest.approx(100.0 * 10 / CLK_TCK / 1.0)
    # a worker whose session has no process left is not reported
    set_processes(host, {300: proc_stat_line(300, session=300, own=(10, 0), start=500)})
    host.clock.now += 5.0
    assert [job.job_id for job in collector.sample({100: (1, 0), 300: (3, 0)}).jobs] == [3]


# ---------------------------------------------------------------------- real processes

BURN = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass\n"
HOLD = "b = bytearray(64 * 2**20)\nimport time\ntime.sleep(60)\n"


def kill_session(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # its group id is its pid (own session)
    proc.wait(timeout=10)


def test_a_real_job_sessions_cpu_and_memory_are_attributed() -> None:
    script = f"{sys.executable} -c '{BURN}' & {sys.executable} -c '{HOLD}' & wait"
    job = subprocess.Popen(["/bin/sh", "-c", script], start_new_session=True)
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        collector = HostCollector(jobs_interval=0.5)
        jobs = {job.pid: (7, 2)}

        def settled() -> bool:
            usage = collector.sample(jobs).jobs
            return (
                bool(usage) and usage[0].processes == 3 and (usage[0].memory_bytes or 0) > 64 << 20
            )

        deadline = time.monotonic() + 15
        while not settled():
            assert time.monotonic() < deadline, "the job's three processes never showed"
            time.sleep(0.1)
        time.sleep(1.0)
        sample = collector.sample(jobs)
        assert len(sample.jobs) == 1  # the other session is nobody's job
        usage = sample.jobs[0]
        assert (usage.job_id, usage.rank, usage.processes) == (7, 2, 3)
        assert usage.memory_bytes is not None and usage.memory_bytes > 64 << 20
        # one process spins: close to a core on an idle machine, and well above 10% on
        # a busy one (the other two sleep)
        assert usage.cpu_percent is not None and usage.cpu_percent > 10.0
        assert sample.cpu_percent is not None and sample.cpu_percent > 0
    finally:
        kill_session(job)
        kill_session(other)


# The cost with 200 processes is measured by bench/agent_bench.py (`make bench`), not here:
# speed targets are checked by benchmarks, never by timed tests.
