"""Which Unix account a job runs as, and the host inventory that says so."""

from __future__ import annotations

import os
import pwd

import psutil
import pytest
from agent_testkit import assignment

from corral import __version__
from corral.agent.gpus import SimulatedBackend
from corral.agent.inventory import host_inventory
from corral.agent.usermap import AccountError, UserMapper

NOBODY = pwd.getpwnam("nobody")


def mapper(
    user_map: dict[str, str] | None = None, *, euid: int = 0, allow_root: bool = False
) -> UserMapper:
    return UserMapper(user_map or {}, allow_root_jobs=allow_root, node_name="gpu-1", euid=euid)


def test_precedence_user_then_star_then_server() -> None:
    a = assignment(user="alice", unix_user="asmith")
    assert mapper().account_name(a) == "asmith"
    assert mapper({"*": "research"}).account_name(a) == "research"
    assert mapper({"*": "research", "alice": "nobody"}).account_name(a) == "nobody"
    assert mapper({"bob": "root"}).account_name(a) == "asmith"


def test_root_agent_resolves_the_full_account() -> None:
    account = mapper({"alice": "nobody"}).resolve(assignment(user="alice"))
    assert account.switch
    assert (account.name, account.uid, account.gid) == ("nobody", NOBODY.pw_uid, NOBODY.pw_gid)
    assert (account.home, account.shell) == (NOBODY.pw_dir, NOBODY.pw_shell)
    assert NOBODY.pw_gid in account.groups


def test_unknown_account_says_how_to_map_it() -> None:
    a = assignment(user="alice", unix_user="no-such-account-x")
    with pytest.raises(AccountError) as err:
        mapper().resolve(a)
    assert str(err.value) == (
        "no Unix account 'no-such-account-x' on node gpu-1 (map it with --user-map alice=ACCOUNT)"
    )


def test_root_jobs_are_refused_unless_allowed() -> None:
    a = assignment(user="alice")
    with pytest.raises(AccountError) as err:
        mapper({"*": "root"}).resolve(a)
    assert str(err.value) == (
        "refusing to run job as root (start the agent with --allow-root-jobs to permit it)"
    )
    account = mapper({"*": "root"}, allow_root=True).resolve(a)
    assert (account.uid, account.switch) == (0, True)


def test_non_root_agent_runs_every_job_as_itself() -> None:
    m = mapper({"alice": "root"}, euid=NOBODY.pw_uid)
    account = m.resolve(assignment(user="alice", unix_user="does-not-exist"))
    assert (account.name, account.uid, account.switch) == ("nobody", NOBODY.pw_uid, False)
    assert m.runs_jobs_as == "nobody"
    assert m.describe() == "not running as root: every job runs as nobody (no account switch)"


def test_root_agent_describes_its_mapping() -> None:
    m = mapper({"*": "research", "bob": "bsmith"})
    assert m.runs_jobs_as == "mapped-user"
    assert m.describe() == (
        "running as root: jobs run as their users' Unix accounts (user map: *→research, bob→bsmith)"
    )


def test_host_inventory() -> None:
    gpus = SimulatedBackend("2xA100-40GB", "gpu-1").inventory()
    node = host_inventory("gpu-1", gpus, runs_jobs_as="mapped-user")
    assert node.name == "gpu-1"
    assert node.hostname == os.uname().nodename
    assert node.cpu_cores == psutil.cpu_count(logical=True)
    assert node.memory_bytes == psutil.virtual_memory().total
    assert len(node.gpus) == 2 and all(g.simulated for g in node.gpus)
    assert (node.simulated, node.gpu_backend) == (True, "simulated")
    assert (node.driver_version, node.cuda_version) == (gpus.driver_version, gpus.cuda_version)
    assert node.agent_version == __version__
    assert node.runs_jobs_as == "mapped-user"
