"""Print what Corral's NVML back-end reads on this machine, next to nvidia-smi's answer.

Used to check the NVML back-end against a real GPU (docs/operations.md): run it on a GPU
node with the package importable; it never changes anything.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time


def main() -> int:
    from corral.agent.gpus import open_backend
    from corral.agent.inventory import host_inventory  # noqa: F401  (import check)

    started = time.perf_counter()
    backend = open_backend(None, "probe")
    opened = time.perf_counter() - started
    try:
        t = time.perf_counter()
        inv = backend.inventory()
        took = time.perf_counter() - t
        out = {
            "backend": inv.backend,
            "simulated": inv.simulated,
            "message": inv.message,
            "driver_version": inv.driver_version,
            "cuda_version": inv.cuda_version,
            "devices": [d.model_dump() for d in inv.devices],
            "open_seconds": round(opened, 4),
            "inventory_seconds": round(took, 5),
        }
    finally:
        backend.close()
    print(json.dumps(out, indent=2))
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=index,uuid,name,memory.total,driver_version",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        print("nvidia-smi:", smi.stdout.strip() or smi.stderr.strip())
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, check=False)
        cuda = [line for line in smi.stdout.splitlines() if "CUDA Version" in line]
        print("nvidia-smi header:", cuda[0].strip() if cuda else "?")
    return 0


if __name__ == "__main__":
    sys.exit(main())
