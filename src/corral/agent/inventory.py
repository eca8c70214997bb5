"""This host's inventory, as the agent registers it (`NodeInventory`)."""

from __future__ import annotations

import os
import socket

import psutil

from corral import __version__
from corral.agent.gpus.base import GpuInventory
from corral.core.schemas import NodeInventory


def host_inventory(
    node_name: str,
    gpus: GpuInventory,
    *,
    runs_jobs_as: str,
    pool: str = "default",
    address: str | None = None,
    container_engine: str | None = None,
) -> NodeInventory:
    """The node's CPU cores (logical), memory (bytes), GPUs and versions.

    ``runs_jobs_as`` is ``"mapped-user"`` for a root agent, else its account name
    (`corral.agent.usermap.UserMapper.runs_jobs_as`). ``address`` is where other nodes
    reach this one (None: its host name). ``container_engine`` is the engine container
    jobs run with (``"docker 20.10.24"``), None when there is none.
    """
    return NodeInventory(
        name=node_name,
        hostname=socket.gethostname()[:253],
        address=address,
        cpu_cores=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        memory_bytes=psutil.virtual_memory().total,
        gpus=list(gpus.devices),
        driver_version=gpus.driver_version,
        cuda_version=gpus.cuda_version,
        simulated=gpus.simulated,
        gpu_backend=gpus.backend,
        agent_version=__version__,
        runs_jobs_as=runs_jobs_as,
        pool=pool,
        container_engine=container_engine,
    )
