"""Which Unix account runs a job on this node.

Precedence: ``--user-map USER=ACCOUNT`` for the job's Corral user, then ``--user-map
*=ACCOUNT``, then the account the server names (``Assignment.unix_user``, the user's
``unix_user`` or their name). Only a root agent can switch accounts; an agent started as
an ordinary user runs every job as itself and says so once at start.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass

from corral.core.schemas import Assignment

RUNS_AS_MAPPED_USER = "mapped-user"
DEFAULT_SHELL = "/bin/sh"  # for accounts that name none


class AccountError(Exception):
    """The job cannot run as the account it maps to; ``str(exc)`` is the failed-start reason."""


@dataclass(frozen=True)
class JobAccount:
    """A resolved Unix account. ``switch`` is True when the agent must change to it
    (it is root); ``groups`` are the supplementary group ids, the primary one included."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str
    switch: bool


class UserMapper:
    """Resolves assignments to accounts. ``euid`` is injectable for tests."""

    def __init__(
        self,
        user_map: Mapping[str, str],
        *,
        allow_root_jobs: bool,
        node_name: str,
        euid: int | None = None,
    ) -> None:
        self.user_map = dict(user_map)
        self.allow_root_jobs = allow_root_jobs
        self.node_name = node_name
        self.euid = os.geteuid() if euid is None else euid

    @property
    def agent_is_root(self) -> bool:
        return self.euid == 0

    @property
    def runs_jobs_as(self) -> str:
        """``"mapped-user"`` for a root agent, else the agent's own account name."""
        return RUNS_AS_MAPPED_USER if self.agent_is_root else _name_of_uid(self.euid)

    def describe(self) -> str:
        """One line for the agent's start-up output."""
        if not self.agent_is_root:
            return (
                f"not running as root: every job runs as {_name_of_uid(self.euid)} "
                "(no account switch)"
            )
        mapping = ", ".join(f"{k}→{v}" for k, v in sorted(self.user_map.items()))
        text = "running as root: jobs run as their users' Unix accounts"
        if mapping:
            text += f" (user map: {mapping})"
        if self.allow_root_jobs:
            text += "; jobs may run as root (--allow-root-jobs)"
        return text

    def account_name(self, assignment: Assignment) -> str:
        """The account name the mapping gives, before it is looked up."""
        return self.user_map.get(assignment.user, self.user_map.get("*", assignment.unix_user))

    def resolve(self, assignment: Assignment) -> JobAccount:
        """The account ``assignment`` runs as. Raises `AccountError` with the reason."""
        if not self.agent_is_root:
            return _own_account(self.euid)
        name = self.account_name(assignment)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise AccountError(
                f"no Unix account {name!r} on node {self.node_name} (map it with "
                f"--user-map {assignment.user}=ACCOUNT)"
            ) from None
        if entry.pw_uid == 0 and not self.allow_root_jobs:
            raise AccountError(
                "refusing to run job as root (start the agent with --allow-root-jobs to permit it)"
            )
        return _account(entry, switch=True)


def _account(entry: pwd.struct_passwd, *, switch: bool) -> JobAccount:
    try:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        groups = (entry.pw_gid,)
    return JobAccount(
        name=entry.pw_name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        groups=groups,
        home=entry.pw_dir,
        shell=entry.pw_shell or DEFAULT_SHELL,
        switch=switch,
    )


def _own_account(euid: int) -> JobAccount:
    try:
        return _account(pwd.getpwuid(euid), switch=False)
    except KeyError:  # an account without a passwd entry (some containers)
        return JobAccount(
            name=str(euid),
            uid=euid,
            gid=os.getegid(),
            groups=(),
            home=os.environ.get("HOME", "/"),
            shell=DEFAULT_SHELL,
            switch=False,
        )


def _name_of_uid(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)  # an account without a passwd entry (some containers)
