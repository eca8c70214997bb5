"""The environment a job starts with (shared by every runtime).

A clean base (PATH, HOME, USER, LOGNAME, SHELL, LANG, LC_ALL), then the job's own
variables, then Corral's, which always win:

``CORRAL_JOB_ID``, ``CORRAL_JOB_NAME``, ``CORRAL_JOB_PROJECT``, ``CORRAL_JOB_USER``,
``CORRAL_JOB_ATTEMPT``, ``CORRAL_NODE``
    who and where the job is.
``CORRAL_WORKER_RANK``, ``CORRAL_WORLD_SIZE``
    which worker of its gang this process is (0..N-1) and how many there are; 0 and 1
    for a job that is not a gang.
``MASTER_ADDR``, ``MASTER_PORT``
    a gang's rendezvous (rank 0's node, and a port the server picked there), the names
    ``torch.distributed`` reads; set only for gangs, where they replace the job's own.
``CORRAL_JOB_GPUS``, ``CORRAL_GPU_UUIDS``
    how many GPUs the worker was given, and their UUIDs (a MIG job: its instance's).
``CUDA_VISIBLE_DEVICES``, ``NVIDIA_VISIBLE_DEVICES``, ``CUDA_DEVICE_ORDER``
    the GPUs the job may use: NVML indices, which are PCI bus order, so
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` makes CUDA number the devices the same way; for a
    MIG job both name its ``MIG-<uuid>`` instance instead (CUDA accepts that form).
``CORRAL_GPU_FRACTION``, ``CORRAL_GPU_MEMORY_BYTES``
    for a job on part of a shared GPU: its fraction of the GPU (e.g. ``0.5``) and its
    share of the GPU's memory in bytes. A well-behaved job caps itself (e.g. PyTorch's
    ``torch.cuda.set_per_process_memory_fraction``); the agent's watchdog
    (`corral.agent.gpushare`) acts on a job that uses more memory than its share.
``CUDA_MPS_PIPE_DIRECTORY``, ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``,
``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``
    for a job on part of a shared GPU when the node runs MPS (``corral agent --mps``):
    where its MPS control daemon listens, its memory share (``"0=<MiB>M"``) and its
    fraction of the GPU's SMs in percent, which the driver then enforces; such a job's
    ``CUDA_VISIBLE_DEVICES`` is its GPU's UUID (see `corral.agent.mps`).
``CORRAL_GPUS_SIMULATED``
    ``1`` when the node's GPUs are simulated.
"""

from __future__ import annotations

from collections.abc import Mapping

from corral.agent.mps import MpsSettings, mps_environment
from corral.agent.usermap import JobAccount
from corral.core.schemas import Assignment, is_reserved_env

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_INHERITED = ("LANG", "LC_ALL")
MIG_UUID_PREFIX = "MIG-"


def job_environment(
    assignment: Assignment,
    account: JobAccount,
    *,
    node_name: str,
    gpus_simulated: bool,
    agent_env: Mapping[str, str],
    mps: MpsSettings | None = None,
) -> dict[str, str]:
    """A clean base, then the user's variables, then Corral's (see the module's doc).

    Nothing else leaks from the agent's own environment (its tokens, proxies, paths).
    ``mps``: where the node's MPS daemons listen (None: MPS is off).
    """
    env = {
        "PATH": agent_env.get("PATH") or DEFAULT_PATH,
        "HOME": account.home,
        "USER": account.name,
        "LOGNAME": account.name,
        "SHELL": account.shell,
    }
    env.update({k: agent_env[k] for k in _INHERITED if k in agent_env})
    # The server refuses reserved names at submission; dropping them here too means a
    # bug or an old server can never let a job choose its own GPUs.
    env.update({k: v for k, v in assignment.env.items() if not is_reserved_env(k)})
    env.update(
        {
            "CORRAL_JOB_ID": str(assignment.job_id),
            "CORRAL_JOB_NAME": assignment.name,
            "CORRAL_JOB_PROJECT": assignment.project,
            "CORRAL_JOB_USER": assignment.user,
            "CORRAL_JOB_ATTEMPT": str(assignment.attempt),
            "CORRAL_NODE": node_name,
            "CORRAL_WORKER_RANK": str(assignment.rank),
            "CORRAL_WORLD_SIZE": str(assignment.world_size),
            "CORRAL_JOB_GPUS": str(len(assignment.gpu_ids)),
            "CORRAL_GPU_UUIDS": ",".join(assignment.gpu_uuids),
            "CUDA_VISIBLE_DEVICES": _cuda_visible_devices(assignment),
            # "void" hides every GPU from the NVIDIA container runtime; "" would mean "all".
            "NVIDIA_VISIBLE_DEVICES": ",".join(assignment.gpu_uuids) or "void",
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        }
    )
    if assignment.master_addr is not None and assignment.master_port is not None:
        env["MASTER_ADDR"] = assignment.master_addr
        env["MASTER_PORT"] = str(assignment.master_port)
    if assignment.gpu_fraction is not None:
        env["CORRAL_GPU_FRACTION"] = str(float(assignment.gpu_fraction))
    if assignment.gpu_memory_bytes is not None:
        env["CORRAL_GPU_MEMORY_BYTES"] = str(int(assignment.gpu_memory_bytes))
    env.update(mps_environment(assignment, mps))
    if gpus_simulated:
        env["CORRAL_GPUS_SIMULATED"] = "1"
    return env


def is_mig(assignment: Assignment) -> bool:
    """Whether the job runs on a MIG instance (its ``gpu_uuids`` name ``MIG-…`` devices)."""
    return any(u.startswith(MIG_UUID_PREFIX) for u in assignment.gpu_uuids)


def _cuda_visible_devices(assignment: Assignment) -> str:
    # CUDA can not address a MIG instance by index: only by its MIG-<uuid>.
    if is_mig(assignment):
        return ",".join(assignment.gpu_uuids)
    return ",".join(str(i) for i in assignment.gpu_ids)
