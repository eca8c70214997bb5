"""Cgroup layout detection and cgroup set-up, on fake /sys/fs/cgroup trees in tmp_path.

The real thing (v1, as root) is exercised in ``test_agent_runtime_limits.py``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from corral.agent.runtime import cgroups
from corral.agent.runtime.cgroups import Cgroups, Hierarchy, JobCgroup

# A hybrid machine like the CI one: v1 hierarchies, plus a v2 mount with no controllers.
V1_MOUNTINFO = """\
23 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
31 23 0:28 / {root} rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / {root}/cpu,cpuacct rw,relatime shared:5 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / {root}/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / {root}/memory\\040limits rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / {root}/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / {root}/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / {root}/unified rw,relatime - cgroup2 cgroup2 rw
"""

V2_MOUNTINFO = """\
23 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
30 23 0:26 / {root} rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
"""


def fake_tree(tmp_path: Path, mountinfo: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A cgroup tree under tmp_path/cgroup and a mountinfo file naming its mounts."""
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    info = tmp_path / "mountinfo"
    info.write_text(mountinfo.format(root=root))
    return root, info


def test_v1_hierarchies_are_found_in_mountinfo(tmp_path: Path) -> None:
    root, info = fake_tree(
        tmp_path,
        V1_MOUNTINFO,
        {
            "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "memory limits/memory.limit_in_bytes": "9223372036854771712\n",
            "cpuset/cpuset.cpus": "0-1\n",
            "pids/pids.max": "max\n",
            "unified/cgroup.controllers": "\n",  # v2 is mounted, but has no controllers
        },
    )
    found = cgroups.detect(mountinfo=info, euid=0)
    assert found.version == 1
    assert set(found.hierarchies) == {
        Hierarchy(root / "cpu,cpuacct", frozenset({"cpu", "cpuacct"})),
        Hierarchy(root / "memory limits", frozenset({"memory"})),  # \040 is a space
    }
    assert found.enforced == ("memory", "cpu")
    assert found.describe() == "process job limits: cgroup v1 (memory, cpu)"


def test_v1_with_only_a_memory_hierarchy(tmp_path: Path) -> None:
    mountinfo = "35 31 0:32 / {root}/memory rw - cgroup cgroup rw,memory\n"
    _, info = fake_tree(tmp_path, mountinfo, {"memory/memory.limit_in_bytes": "0\n"})
    found = cgroups.detect(mountinfo=info, euid=0)
    assert (found.version, found.enforced) == (1, ("memory",))
    assert found.describe() == "process job limits: cgroup v1 (memory)"
    assert found.limits_note(2, 1 << 30) == (
        "limits: memory 1GiB (cgroup v1); limits not enforced: 2 CPUs (no such controller)"
    )


def test_v2_is_used_when_its_root_offers_memory_and_cpu(tmp_path: Path) -> None:
    root, info = fake_tree(
        tmp_path, V2_MOUNTINFO, {"cgroup.controllers": "cpuset cpu io memory hugetlb pids\n"}
    )
    found = cgroups.detect(mountinfo=info, euid=0)
    assert found.version == 2
    assert found.hierarchies == (Hierarchy(root, frozenset({"memory", "cpu"})),)
    assert found.describe() == "process job limits: cgroup v2 (memory, cpu)"


def test_v2_with_controllers_wins_over_v1(tmp_path: Path) -> None:
    root, info = fake_tree(
        tmp_path,
        V1_MOUNTINFO,
        {
            "memory limits/memory.limit_in_bytes": "0\n",
            "unified/cgroup.controllers": "cpu memory\n",
        },
    )
    found = cgroups.detect(mountinfo=info, euid=0)
    assert found.version == 2
    assert found.hierarchies == (Hierarchy(root / "unified", frozenset({"memory", "cpu"})),)


def test_proc_mounts_is_the_fallback(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    (root / "memory").mkdir(parents=True)
    mounts = tmp_path / "mounts"
    mounts.write_text(
        f"sysfs /sys sysfs rw 0 0\ncgroup {root}/memory cgroup rw,relatime,memory 0 0\n"
    )
    found = cgroups.detect(mountinfo=tmp_path / "missing", mounts=mounts, euid=0)
    assert found.version == 1
    assert found.hierarchies == (Hierarchy(root / "memory", frozenset({"memory"})),)


@pytest.mark.parametrize(
    ("mountinfo", "files", "euid", "reason"),
    [
        (V1_MOUNTINFO, {}, 1000, "not root"),
        # v2 without controllers, and v1 with neither memory nor cpu
        (
            "41 31 0:38 / {root}/unified rw - cgroup2 cgroup2 rw\n"
            "39 31 0:36 / {root}/pids rw - cgroup cgroup rw,pids\n",
            {"unified/cgroup.controllers": "\n", "pids/pids.max": "max\n"},
            0,
            "no writable cgroup memory or cpu controller is mounted",
        ),
        ("23 1 0:21 / /sys rw - sysfs sysfs rw\n", {}, 0, "no writable cgroup memory"),
    ],
)
def test_no_limits_and_why(
    tmp_path: Path, mountinfo: str, files: dict[str, str], euid: int, reason: str
) -> None:
    _, info = fake_tree(tmp_path, mountinfo, files)
    found = cgroups.detect(mountinfo=info, euid=euid)
    assert found.version is None and found.enforced == ()
    assert found.reason is not None and found.reason.startswith(reason)
    assert found.describe().startswith(f"process job limits: none ({reason}")
    assert found.describe().endswith("; their CPU and memory limits are not enforced")


def test_limits_notes() -> None:
    v1 = Cgroups(version=1, hierarchies=(Hierarchy(Path("/x"), frozenset({"memory", "cpu"})),))
    assert v1.limits_note(None, None) is None
    assert v1.limits_note(0.5, 512 << 20) == "limits: 0.5 CPUs, memory 512MiB (cgroup v1)"
    off = cgroups.disabled("not root")
    assert off.limits_note(4, None) == "limits not enforced: 4 CPUs (not root)"
    assert off.limits_note(None, 3 << 29) == "limits not enforced: memory 1.5GiB (not root)"


def test_agent_groups_differ_by_state_directory(tmp_path: Path) -> None:
    a = cgroups.agent_group("gpu-1", tmp_path / "a")
    assert a.startswith("gpu-1-") and len(a) == len("gpu-1-") + 8
    assert a == cgroups.agent_group("gpu-1", tmp_path / "a")
    assert a != cgroups.agent_group("gpu-1", tmp_path / "b")


# ------------------------------------------------------------------ v2 set-up, faked

V2_FILES = (
    *("cgroup.procs", "cgroup.subtree_control"),
    *("memory.max", "memory.swap.max", "memory.events", "cpu.max", "cpu.stat"),
)


def fake_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """mkdir in a fake tree makes a cgroup's interface files, as the kernel does."""

    def mkdir(path: Path) -> None:
        path.mkdir(exist_ok=True)
        for name in V2_FILES:
            (path / name).touch()

    def rmdir(path: Path) -> bool:
        if not path.exists():
            return True
        if any(child.is_dir() for child in path.iterdir()):
            return False  # a cgroup with child cgroups cannot go
        shutil.rmtree(path)
        return True

    monkeypatch.setattr(cgroups, "_mkdir", mkdir)
    monkeypatch.setattr(cgroups, "_rmdir", rmdir)


def test_v2_job_cgroup_gets_its_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_kernel(monkeypatch)
    root, info = fake_tree(
        tmp_path,
        V2_MOUNTINFO,
        {"cgroup.controllers": "cpu io memory pids\n", "cgroup.subtree_control": ""},
    )
    found = cgroups.detect(mountinfo=info, euid=0)
    job = found.create("gpu-1-abcd1234", "7-2-r1", cpus=1.5, memory_bytes=64 << 20)
    path = root / "corral" / "gpu-1-abcd1234" / "7-2-r1"
    assert job == JobCgroup((path,))
    # Controllers are handed down level by level to the job's cgroup.
    for level in (root, root / "corral", root / "corral" / "gpu-1-abcd1234"):
        assert (level / "cgroup.subtree_control").read_text() == "+memory +cpu"
    assert (path / "memory.max").read_text() == str(64 << 20)
    assert (path / "memory.swap.max").read_text() == "0"
    assert (path / "cpu.max").read_text() == "150000 100000"
    assert job.memory_limit() == 64 << 20

    (path / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\n")
    (path / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    assert (job.oom_kills(), job.cpu_seconds()) == (2, 2.5)
    (path / "memory.max").write_text("max\n")
    assert job.memory_limit() is None

    assert job.remove(wait_seconds=0)
    assert not path.exists()
    assert not path.parent.exists(), "the agent's directory goes with its last job"
    assert (root / "corral").is_dir()


def test_names_that_could_escape_are_refused(tmp_path: Path) -> None:
    found = Cgroups(version=2, hierarchies=(Hierarchy(tmp_path, frozenset({"memory"})),))
    for group, name in (("..", "1-1"), ("gpu-1", "../x"), ("gpu-1", ""), ("a/b", "1-1")):
        with pytest.raises(cgroups.CgroupError, match="cannot name a cgroup"):
            found.create(group, name, cpus=None, memory_bytes=None)
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_record_never_names_a_shared_cgroup() -> None:
    job = "/sys/fs/cgroup/memory/corral/gpu-1-abcd1234/3-1"
    assert JobCgroup.adopt([job], "3-1") == JobCgroup((Path(job),))
    assert JobCgroup.adopt(["/sys/fs/cgroup/memory"], "3-1") is None
    assert JobCgroup.adopt(["corral/gpu-1/3-1"], "3-1") is None  # not absolute
    assert JobCgroup.adopt([], "3-1") is None
