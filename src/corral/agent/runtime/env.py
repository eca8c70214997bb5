"""The environment a job starts with (shared by every runtime)."""

from __future__ import annotations

from collections.abc import Mapping

from corral.agent.usermap import JobAccount
from corral.core.schemas import RESERVED_ENV_KEYS, RESERVED_ENV_PREFIXES, Assignment

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_INHERITED = ("LANG", "LC_ALL")


def job_environment(
    assignment: Assignment,
    account: JobAccount,
    *,
    node_name: str,
    gpus_simulated: bool,
    agent_env: Mapping[str, str],
) -> dict[str, str]:
    """A clean base, then the user's variables, then Corral's (which always win).

    Nothing else leaks from the agent's own environment (its tokens, proxies, paths).
    ``CUDA_VISIBLE_DEVICES`` holds NVML indices, which are PCI bus order, so
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` makes CUDA number the devices the same way.
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
    env.update(
        {
            k: v
            for k, v in assignment.env.items()
            if k not in RESERVED_ENV_KEYS and not k.startswith(RESERVED_ENV_PREFIXES)
        }
    )
    env.update(
        {
            "CORRAL_JOB_ID": str(assignment.job_id),
            "CORRAL_JOB_NAME": assignment.name,
            "CORRAL_JOB_PROJECT": assignment.project,
            "CORRAL_JOB_USER": assignment.user,
            "CORRAL_JOB_ATTEMPT": str(assignment.attempt),
            "CORRAL_NODE": node_name,
            "CORRAL_JOB_GPUS": str(len(assignment.gpu_ids)),
            "CORRAL_GPU_UUIDS": ",".join(assignment.gpu_uuids),
            "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in assignment.gpu_ids),
            # "void" hides every GPU from the NVIDIA container runtime; "" would mean "all".
            "NVIDIA_VISIBLE_DEVICES": ",".join(assignment.gpu_uuids) or "void",
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        }
    )
    if gpus_simulated:
        env["CORRAL_GPUS_SIMULATED"] = "1"
    return env
