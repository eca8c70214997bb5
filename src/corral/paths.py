"""Where Corral keeps local state. Everything lives under ``$CORRAL_HOME``.

Layout::

    $CORRAL_HOME/config.json          the CLI's server, token and current project
    $CORRAL_HOME/server/              `corral server` / `corral up`: corral.db, logs/,
                                      admin-token, join-token (mode 0600)
    $CORRAL_HOME/agent/<node>/        `corral agent`: node-token,
                                      jobs/<id>-<attempt>[-r<rank>]/
    $CORRAL_HOME/demo/                `corral demo`: a throw-away server and agents
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_PORT = 8420


def corral_home() -> Path:
    """``$CORRAL_HOME``, or ``~/.local/share/corral`` when it is not set."""
    env = os.environ.get("CORRAL_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".local" / "share" / "corral"


def server_dir() -> Path:
    return corral_home() / "server"


def agent_dir(node: str) -> Path:
    return corral_home() / "agent" / node


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (tokens, keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    path.chmod(0o600)
