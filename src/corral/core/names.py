"""Rules for the names users give to jobs, projects, users and nodes.

Names end up in paths on the agent, in environment variables, in log file names and in
shell commands people copy from the CLI, so they are restricted to DNS-label characters
(as Kubernetes and Run:ai do): lower-case letters, digits and '-', at most 63 long,
starting and ending with a letter or digit. Nothing else — no '/', '..', spaces or shell
metacharacters — can get through.
"""

from __future__ import annotations

import re

from corral.core.errors import InvalidRequest

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Node names are host names: dots are allowed (node0.lab.example), still no '/' or '..'.
NODE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


def check_name(value: str, *, what: str, field: str = "name") -> str:
    """Return ``value`` if it is a valid name of a ``what``; raise `InvalidRequest` if not."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InvalidRequest(
            f"{field}: {value!r} is not a valid {what} name: use 1-63 lower-case letters, "
            "digits and '-', starting and ending with a letter or digit",
            field=field,
        )
    return value


def check_node_name(value: str, *, field: str = "name") -> str:
    """Return ``value`` if it is a valid node (host) name; raise `InvalidRequest` if not."""
    if not isinstance(value, str) or not NODE_NAME_RE.match(value) or ".." in value:
        raise InvalidRequest(
            f"{field}: {value!r} is not a valid node name: use lower-case letters, digits, "
            "'-' and '.'",
            field=field,
        )
    return value


def node_name_from_hostname(hostname: str) -> str:
    """Turn a host name into a valid node name (``GPU-Box_01`` → ``gpu-box-01``)."""
    cleaned = re.sub(r"[^a-z0-9.-]+", "-", hostname.lower()).strip("-.")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    return cleaned[:253] or "node"
