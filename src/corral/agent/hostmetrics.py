"""The host half of monitoring: one `HostSample` per call of `HostCollector.sample`.

It runs every second on every node, so it is built to cost little: with ~280 processes
on the host a sample takes ~0.1 ms of CPU and a process-table walk ~2 ms, ~0.5 ms a
second in all with the default 5 s walk interval, 0.05% of a core
(``tests/unit/agent/test_hostmetrics.py::test_sample_cost_with_200_processes``):

- Everything is read straight from ``/proc`` and ``/sys`` with ``os.read`` on a raw file
  descriptor; no ``psutil.Process`` objects. (psutil's global helpers read the same files but do
  more work per call, count virtual devices, and ``psutil.cpu_percent`` keeps one
  module-wide baseline that any other caller in the process would reset.)
- Counters (CPU time, disk sectors, network bytes, RAPL energy) are kept from the previous
  call and turned into rates over the time between the calls; the first call has no rate
  (None), as `corral.core.telemetry` requires.
- What changes slowly is refreshed at slower, configurable intervals and reused between:
  the mount table (``mounts_interval``), the list of sensors (``sensors_discovery_interval``)
  and their readings (``sensors_interval``: some hwmon drivers talk to a BMC, an NVMe
  controller or a SATA disk on every read), and the process-table walk behind per-job
  usage (``jobs_interval``, default 5 s).

Per-job usage: a Corral job worker runs in its own session whose id is its shim's pid
(`corral.agent.runtime.process`). `sample` takes the running workers as
``{session id: (job_id, rank)}``; each walk reads ``/proc/<pid>/stat`` of every process
once and sums, per session, the resident memory and the CPU time. CPU time includes the
children a process has waited for (``cutime``/``cstime``), so the short-lived commands of
a shell-script job are counted too, once: a process that vanished since the previous walk
while its parent is still in the session has its earlier share taken off again, since the
parent's ``cutime`` now holds all of it. Memory is the sum of RSS, so pages shared by
forked workers are counted once per process (an overestimate; PSS would cost a read of
``smaps_rollup`` per process).

Not thread-safe: one collector belongs to one sampling loop.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from corral.core.telemetry import MAX_PROCESSES, FilesystemUsage, HostSample, JobUsage

# Filesystems that hold no user data of their own (or are the layers of containers and
# snaps, which would count the disk below them again).
PSEUDO_FSTYPES = frozenset(
    [
        "aufs",
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devfs",
        "devpts",
        "devtmpfs",
        "efivarfs",
        "fusectl",
        "hugetlbfs",
        "iso9660",
        "mqueue",
        "nfsd",
        "nsfs",
        "overlay",
        "proc",
        "pstore",
        "ramfs",
        "rpc_pipefs",
        "securityfs",
        "selinuxfs",
        "squashfs",
        "sysfs",
        "tmpfs",
        "tracefs",
        "udf",
        "zsmalloc",
    ]
)
# statvfs on one of these blocks for as long as its server does not answer, which would
# stall the whole sampling loop; and every node would report the same shared volume.
NETWORK_FSTYPES = frozenset(
    [
        "9p",
        "afs",
        "beegfs",
        "ceph",
        "cifs",
        "glusterfs",
        "gpfs",
        "lustre",
        "ncpfs",
        "nfs",
        "nfs4",
        "smb3",
        "smbfs",
    ]
)
MAX_FILESYSTEMS = 256
MAX_TEMPERATURES = 256
SECTOR_BYTES = 512  # /proc/diskstats counts 512-byte sectors whatever the device's own size

JobMap = Mapping[int, tuple[int, int]]  # session id (the shim's pid) -> (job_id, rank)


def read_small(path: str) -> bytes | None:
    """The contents of a (small) procfs or sysfs file, read without Python's file
    objects; None if it cannot be read (gone, no permission)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


class ProcStat(NamedTuple):
    """What one read of ``/proc/<pid>/stat`` tells about a process."""

    start: int  # clock ticks after boot: with the pid, names the process uniquely
    ppid: int
    session: int
    own_ticks: int  # utime + stime
    child_ticks: int  # cutime + cstime: children it has waited for
    rss_pages: int


def parse_stat(data: bytes) -> ProcStat | None:
    """Parse ``/proc/<pid>/stat`` (the command may hold spaces and parentheses)."""
    fields = data.rpartition(b")")[2].split()
    # fields[0] is field 3 of proc(5) ("state"): field N is fields[N - 3].
    try:
        return ProcStat(
            start=int(fields[19]),
            ppid=int(fields[1]),
            session=int(fields[3]),
            own_ticks=int(fields[11]) + int(fields[12]),
            child_ticks=int(fields[13]) + int(fields[14]),
            rss_pages=int(fields[21]),
        )
    except (IndexError, ValueError):
        return None


@dataclass
class _JobNow:
    cpu_percent: float | None
    memory_bytes: int
    processes: int


class HostCollector:
    """Samples this host. ``proc_root``/``sys_root`` and ``clock`` (monotonic seconds)
    are injectable for tests; ``statvfs`` too (for a fake mount table).

    ``include_network_filesystems``: also report NFS, CIFS, Lustre, ... mounts (off by
    default: see `NETWORK_FSTYPES`). ``jobs_interval``: seconds between process-table
    walks for per-job usage (a walk is also made early when a session id appears in
    ``jobs`` that the last walk was not asked about).
    """

    def __init__(
        self,
        *,
        proc_root: str | Path = "/proc",
        sys_root: str | Path = "/sys",
        clock: Callable[[], float] = time.monotonic,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
        jobs_interval: float = 5.0,
        mounts_interval: float = 30.0,
        sensors_interval: float = 5.0,
        sensors_discovery_interval: float = 300.0,
        include_network_filesystems: bool = False,
    ) -> None:
        self._proc = str(proc_root)
        self._sys = str(sys_root)
        self._clock = clock
        self._statvfs = statvfs
        self.jobs_interval = jobs_interval
        self.mounts_interval = mounts_interval
        self.sensors_interval = sensors_interval
        self.sensors_discovery_interval = sensors_discovery_interval
        self._skip_fstypes = PSEUDO_FSTYPES | (
            frozenset() if include_network_filesystems else NETWORK_FSTYPES
        )
        self._page_size = os.sysconf("SC_PAGE_SIZE")
        self._clk_tck = os.sysconf("SC_CLK_TCK")
        # previous counters, for rates
        self._cpu_prev: tuple[int, int] | None = None  # (total, idle) ticks
        self._disk_prev: tuple[float, dict[str, tuple[int, int]]] | None = None
        self._net_prev: tuple[float, dict[str, tuple[int, int]]] | None = None
        self._rapl_prev: tuple[float, dict[str, int]] | None = None
        # caches of slow-changing things
        self._disk_filter: tuple[frozenset[str], frozenset[str]] | None = None
        self._net_filter: tuple[frozenset[str], frozenset[str]] | None = None
        self._mounts: list[str] = []
        self._mounts_at: float | None = None
        self._temp_files: list[tuple[str, str]] = []  # (key, path of temp*_input)
        self._power_meter_files: list[str] = []  # hwmon power*_average/_input, microwatts
        self._rapl_zones: list[tuple[str, str, int]] = []  # (zone, energy_uj path, range)
        self._sensors_found_at: float | None = None
        self._temps: dict[str, float] | None = None
        self._power_meter_watts: float | None = None
        self._sensors_at: float | None = None
        # per-job usage
        self._walk_prev: tuple[float, dict[int, ProcStat]] | None = None
        self._walk_asked: frozenset[int] = frozenset()
        self._jobs_now: dict[int, _JobNow] = {}

    # ------------------------------------------------------------------ sample

    def sample(self, jobs: JobMap | None = None) -> HostSample:
        """The host now; ``jobs`` maps each running worker's session id to its
        ``(job_id, rank)`` and fills ``HostSample.jobs``."""
        now = self._clock()
        memory = self._meminfo()
        disk_read, disk_write = self._disk_rates(now)
        net_rx, net_tx = self._net_rates(now)
        self._refresh_sensors(now)
        rapl_watts = self._rapl_watts(now)
        return HostSample(
            cpu_percent=self._cpu_percent(),
            cpu_count=os.cpu_count(),
            load1=self._load1(),
            memory_used_bytes=memory.get("used"),
            memory_total_bytes=memory.get("total"),
            swap_used_bytes=memory.get("swap_used"),
            swap_total_bytes=memory.get("swap_total"),
            disk_read_bytes_per_s=disk_read,
            disk_write_bytes_per_s=disk_write,
            net_rx_bytes_per_s=net_rx,
            net_tx_bytes_per_s=net_tx,
            filesystems=self._filesystems(now),
            temperatures_celsius=self._temps,
            power_watts=self._power_meter_watts
            if self._power_meter_watts is not None
            else rapl_watts,
            jobs=self._job_usage(now, jobs or {}),
        )

    # ------------------------------------------------------------------ CPU, memory, load

    def _cpu_percent(self) -> float | None:
        data = read_small(f"{self._proc}/stat")
        if data is None or not data.startswith(b"cpu "):
            return None
        values = [int(v) for v in data.split(b"\n", 1)[0].split()[1:]]
        # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time
        # is already inside user/nice, so only the first eight add up to the total.
        total = sum(values[:8])
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        prev, self._cpu_prev = self._cpu_prev, (total, idle)
        if prev is None or total <= prev[0]:
            return None
        busy = (total - prev[0]) - (idle - prev[1])
        return min(100.0, max(0.0, 100.0 * busy / (total - prev[0])))

    def _load1(self) -> float | None:
        data = read_small(f"{self._proc}/loadavg")
        try:
            return float(data.split()[0]) if data else None
        except (IndexError, ValueError):
            return None

    def _meminfo(self) -> dict[str, int]:
        data = read_small(f"{self._proc}/meminfo")
        if data is None:
            return {}
        kib: dict[bytes, int] = {}
        for line in data.splitlines():
            name, _, rest = line.partition(b":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                kib[name] = int(parts[0]) * 1024
        out: dict[str, int] = {}
        if b"MemTotal" in kib:
            total = kib[b"MemTotal"]
            available = kib.get(b"MemAvailable")
            if available is None:  # kernels before 3.14
                available = kib.get(b"MemFree", 0) + kib.get(b"Buffers", 0)
                available += kib.get(b"Cached", 0)
            out["total"] = total
            out["used"] = max(0, total - available)  # what applications hold
        if b"SwapTotal" in kib:
            out["swap_total"] = kib[b"SwapTotal"]
            out["swap_used"] = max(0, kib[b"SwapTotal"] - kib.get(b"SwapFree", 0))
        return out

    # ------------------------------------------------------------------ disk and network

    def _disk_rates(self, now: float) -> tuple[float | None, float | None]:
        data = read_small(f"{self._proc}/diskstats")
        counters: dict[str, tuple[int, int]] = {}
        for line in (data or b"").splitlines():
            parts = line.split()
            if len(parts) >= 10:
                name = parts[2].decode(errors="replace")
                counters[name] = (int(parts[5]), int(parts[9]))
        keep = self._physical_disks(frozenset(counters))
        counters = {name: value for name, value in counters.items() if name in keep}
        prev, self._disk_prev = self._disk_prev, (now, counters)
        return _rates(prev, now, counters, SECTOR_BYTES)

    def _physical_disks(self, names: frozenset[str]) -> frozenset[str]:
        """Whole disks backed by a device (not partitions, loop, zram, dm or md devices,
        which would count the same bytes again); all whole disks if none has one."""
        if self._disk_filter is not None and self._disk_filter[0] == names:
            return self._disk_filter[1]
        whole = {n for n in names if Path(f"{self._sys}/block/{n}").exists()}
        keep = {n for n in whole if Path(f"{self._sys}/block/{n}/device").exists()}
        if not keep:
            keep = {n for n in whole if not n.startswith(("loop", "ram", "zram"))}
        self._disk_filter = (names, frozenset(keep))
        return self._disk_filter[1]

    def _net_rates(self, now: float) -> tuple[float | None, float | None]:
        data = read_small(f"{self._proc}/net/dev")
        counters: dict[str, tuple[int, int]] = {}
        for line in (data or b"").splitlines()[2:]:
            name, sep, rest = line.partition(b":")
            parts = rest.split()
            if sep and len(parts) >= 9:
                counters[name.strip().decode(errors="replace")] = (int(parts[0]), int(parts[8]))
        keep = self._physical_interfaces(frozenset(counters))
        counters = {name: value for name, value in counters.items() if name in keep}
        prev, self._net_prev = self._net_prev, (now, counters)
        return _rates(prev, now, counters, 1)

    def _physical_interfaces(self, names: frozenset[str]) -> frozenset[str]:
        """Interfaces backed by a device (a bond's or a VLAN's traffic is counted on the
        ports below it; bridges, veths and loopback would count it again); every one but
        loopback if none has one (a container's veth)."""
        if self._net_filter is not None and self._net_filter[0] == names:
            return self._net_filter[1]
        keep = {n for n in names if Path(f"{self._sys}/class/net/{n}/device").exists()}
        if not keep:
            keep = {n for n in names if n != "lo"}
        self._net_filter = (names, frozenset(keep))
        return self._net_filter[1]

    # ------------------------------------------------------------------ filesystems

    def _filesystems(self, now: float) -> list[FilesystemUsage]:
        if self._mounts_at is None or now - self._mounts_at >= self.mounts_interval:
            self._mounts = self._real_mounts()
            self._mounts_at = now
        out = []
        for mount in self._mounts:
            try:
                st = self._statvfs(mount)
            except OSError:
                continue
            if st.f_blocks == 0:
                continue
            out.append(
                FilesystemUsage(
                    mount=mount,
                    used_bytes=max(0, (st.f_blocks - st.f_bfree) * st.f_frsize),
                    total_bytes=st.f_blocks * st.f_frsize,
                )
            )
        return out

    def _real_mounts(self) -> list[str]:
        """Mount points of real filesystems from the mount table, one per device (the
        shortest path: a bind mount or a btrfs subvolume shows the same device again)."""
        data = read_small(f"{self._proc}/self/mounts") or b""
        by_device: dict[str, str] = {}
        for line in data.splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            device, mount, fstype = (_unescape(p) for p in parts[:3])
            if fstype in self._skip_fstypes or fstype == "fuse" or fstype.startswith("fuse."):
                continue
            if device in ("none", ""):
                continue
            known = by_device.get(device)
            if known is None or len(mount) < len(known):
                by_device[device] = mount
        return sorted(by_device.values())[:MAX_FILESYSTEMS]

    # ------------------------------------------------------------------ sensors and power

    def _refresh_sensors(self, now: float) -> None:
        if (
            self._sensors_found_at is None
            or now - self._sensors_found_at >= self.sensors_discovery_interval
        ):
            self._discover_sensors()
            self._sensors_found_at = now
        if self._sensors_at is not None and now - self._sensors_at < self.sensors_interval:
            return
        self._sensors_at = now
        temps: dict[str, float] = {}
        for key, path in self._temp_files:
            value = _read_int(path)
            if value is not None:
                temps[key] = value / 1000.0
        self._temps = temps or None
        watts = [_read_int(path) for path in self._power_meter_files]
        known = [w for w in watts if w is not None]
        self._power_meter_watts = sum(known) / 1e6 if known else None

    def _discover_sensors(self) -> None:
        """The hwmon temperature inputs (with thermal zones as the fallback, as psutil
        does), ACPI power meters (whole-node power from the BMC), and RAPL zones."""
        temps: list[tuple[str, str]] = []
        meters: list[str] = []
        chips: dict[str, int] = {}
        hwmon = Path(f"{self._sys}/class/hwmon")
        for chip_dir in sorted(_listdir(hwmon), key=_natural):
            base = f"{hwmon}/{chip_dir}"
            name = (read_small(f"{base}/name") or chip_dir.encode()).decode(errors="replace")
            name = name.strip() or chip_dir
            seen = chips.get(name, 0)
            chips[name] = seen + 1
            chip = name if seen == 0 else f"{name}#{seen}"
            files = _listdir(Path(base))
            for file in sorted(files, key=_natural):
                match = re.fullmatch(r"temp(\d+)_input", file)
                if match:
                    label = read_small(f"{base}/temp{match[1]}_label")
                    text = label.decode(errors="replace").strip() if label else ""
                    temps.append((f"{chip}/{text or f'temp{match[1]}'}", f"{base}/{file}"))
            if name == "power_meter":  # microwatts; the average if it has one
                power = sorted(f for f in files if re.fullmatch(r"power1_(average|input)", f))
                meters += [f"{base}/{power[0]}"] if power else []
        if not temps:
            thermal = Path(f"{self._sys}/class/thermal")
            for zone in sorted(_listdir(thermal), key=_natural):
                if zone.startswith("thermal_zone"):
                    kind = read_small(f"{thermal}/{zone}/type")
                    kind_text = kind.decode(errors="replace").strip() if kind else zone
                    temps.append((f"{kind_text}/{zone}", f"{thermal}/{zone}/temp"))
        self._temp_files = temps[:MAX_TEMPERATURES]
        self._power_meter_files = meters
        self._rapl_zones = self._discover_rapl()

    def _discover_rapl(self) -> list[tuple[str, str, int]]:
        """RAPL zones to add up: ``psys`` (the whole platform) when there is one, else each
        package with its DRAM subzone (cores and uncore are parts of the package). The
        MMIO interface repeats the package zone and is left out."""
        root = Path(f"{self._sys}/class/powercap")
        zones: dict[str, str] = {}
        for zone in _listdir(root):
            if re.fullmatch(r"intel-rapl:\d+(:\d+)?", zone):
                name = read_small(f"{root}/{zone}/name")
                zones[zone] = name.decode(errors="replace").strip() if name else ""
        chosen = [z for z, name in zones.items() if name == "psys" and z.count(":") == 1]
        if not chosen:
            chosen = [
                z
                for z, name in zones.items()
                if (z.count(":") == 1 and name.startswith("package")) or name == "dram"
            ]
        out = []
        for zone in sorted(chosen, key=_natural):
            limit = _read_int(f"{root}/{zone}/max_energy_range_uj")
            out.append((zone, f"{root}/{zone}/energy_uj", limit or 0))
        return out

    def _rapl_watts(self, now: float) -> float | None:
        if not self._rapl_zones:
            return None
        energy: dict[str, int] = {}
        for zone, path, _ in self._rapl_zones:
            value = _read_int(path)  # root only on kernels since 5.10
            if value is None:
                return None
            energy[zone] = value
        prev, self._rapl_prev = self._rapl_prev, (now, energy)
        if prev is None or now <= prev[0] or set(prev[1]) != set(energy):
            return None
        joules = 0.0
        for zone, _, limit in self._rapl_zones:
            delta = energy[zone] - prev[1][zone]
            if delta < 0:  # the counter wrapped around
                delta += limit
            joules += max(0, delta) / 1e6
        return joules / (now - prev[0])

    # ------------------------------------------------------------------ per-job usage

    def _job_usage(self, now: float, jobs: JobMap) -> list[JobUsage]:
        asked = frozenset(jobs)
        due = self._walk_prev is None or now - self._walk_prev[0] >= self.jobs_interval
        if jobs and (due or not asked <= self._walk_asked):
            self._walk(now, asked)
        out = []
        for session, (job_id, rank) in jobs.items():
            usage = self._jobs_now.get(session)
            if usage is not None:
                out.append(
                    JobUsage(
                        job_id=job_id,
                        rank=rank,
                        cpu_percent=usage.cpu_percent,
                        memory_bytes=usage.memory_bytes,
                        processes=usage.processes,
                    )
                )
        return out[:MAX_PROCESSES]

    def walk_processes(self) -> dict[int, ProcStat]:
        """Every process now, by pid (one read of ``/proc/<pid>/stat`` each)."""
        table: dict[int, ProcStat] = {}
        try:
            names = os.listdir(self._proc)  # noqa: PTH208 (cheaper than Path objects)
        except OSError:
            return table
        for name in names:
            if name.isdigit():
                data = read_small(f"{self._proc}/{name}/stat")
                if data is not None:
                    parsed = parse_stat(data)
                    if parsed is not None:
                        table[int(name)] = parsed
        return table

    def _walk(self, now: float, asked: frozenset[int]) -> None:
        table = self.walk_processes()
        prev = self._walk_prev
        self._walk_prev = (now, table)
        self._walk_asked = asked
        members: dict[int, list[int]] = {s: [] for s in asked}
        for pid, proc in table.items():
            if proc.session in members:
                members[proc.session].append(pid)
        # A baseline too old would average a new job's first seconds over a long time.
        fresh = prev is not None and 0 < now - prev[0] <= 3 * max(self.jobs_interval, 1.0)
        before: dict[int, list[int]] = {s: [] for s in asked}
        if prev is not None and fresh:
            for pid, proc in prev[1].items():
                if proc.session in before:
                    before[proc.session].append(pid)
        result: dict[int, _JobNow] = {}
        for session, pids in members.items():
            if not pids:
                continue  # the worker has ended
            memory = sum(table[p].rss_pages for p in pids) * self._page_size
            cpu = None
            if prev is not None and fresh:
                ticks = _session_ticks(session, pids, table, before[session], prev[1])
                cpu = 100.0 * ticks / self._clk_tck / (now - prev[0])
            result[session] = _JobNow(cpu_percent=cpu, memory_bytes=memory, processes=len(pids))
        self._jobs_now = result


def _session_ticks(
    session: int,
    pids: Iterable[int],
    now: Mapping[int, ProcStat],
    pids_before: Iterable[int],
    before: Mapping[int, ProcStat],
) -> int:
    """CPU ticks session ``session`` used between two walks (see the module's
    docstring): ``pids`` are its processes now, ``pids_before`` at the previous walk."""
    ticks = 0
    for pid in pids:
        proc = now[pid]
        old = before.get(pid)
        if old is not None and old.start == proc.start:
            ticks += proc.own_ticks + proc.child_ticks - old.own_ticks - old.child_ticks
        else:  # started since the previous walk: all of its time is new
            ticks += proc.own_ticks + proc.child_ticks
    for pid in pids_before:
        old = before[pid]
        still = now.get(pid)
        if still is not None and still.start == old.start:
            continue
        parent, parent_then = now.get(old.ppid), before.get(old.ppid)
        if (
            parent is not None
            and parent.session == session
            and parent_then is not None
            and parent_then.start == parent.start
        ):
            # Reaped by its parent, whose child ticks now hold all of its time, of
            # which the part up to the previous walk was counted then.
            ticks -= old.own_ticks + old.child_ticks
    return max(0, ticks)


def _rates(
    prev: tuple[float, dict[str, tuple[int, int]]] | None,
    now: float,
    counters: dict[str, tuple[int, int]],
    unit: int,
) -> tuple[float | None, float | None]:
    """Per-second rates of two summed counters, over the devices present both times (a
    device that appeared, vanished or was reset adds nothing)."""
    if prev is None or now <= prev[0]:
        return None, None
    first = second = 0
    for name, (a, b) in counters.items():
        old = prev[1].get(name)
        if old is not None:
            first += max(0, a - old[0])
            second += max(0, b - old[1])
    seconds = now - prev[0]
    return first * unit / seconds, second * unit / seconds


def _read_int(path: str) -> int | None:
    data = read_small(path)
    try:
        return int(data.strip()) if data is not None else None
    except ValueError:
        return None


def _listdir(path: Path) -> list[str]:
    try:
        return [entry.name for entry in path.iterdir()]
    except OSError:
        return []


def _natural(name: str) -> tuple[str | int, ...]:
    """Sort key: ``hwmon2`` before ``hwmon10``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _unescape(field: bytes) -> str:
    """A field of the mount table, whose spaces and tabs are written as ``\\040``."""
    return _ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), field).decode(errors="replace")
