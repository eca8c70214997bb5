"""The scripted multi-team workload of ``corral demo``.

Three projects, two researchers, and fifteen jobs sized so that the simulated cluster
(2 nodes x 8 A100 + 1 node x 4 RTX 4090 = 20 GPUs) fills up at once: most jobs start,
one fails after a few seconds, and the rest wait — among them an 8-GPU job that starts
only when a whole node frees up. Two evaluation jobs share one GPU (0.5 each), and a
gang of two workers starts both or neither. The jobs are short shell loops that print
training-like progress, so `corral logs -f` has something to show; all end within ten
minutes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from corral.client import ApiClient
from corral.core.schemas import JobSubmit, TokenOut
from corral.core.states import JobKind
from corral.paths import write_secret

PROJECTS = ("team-a", "team-b", "team-c")
# Guaranteed GPUs per project, adding up to the demo cluster's 20: each team gets its
# quota when it asks, and borrows idle GPUs beyond it (interactive jobs need quota).
QUOTAS = {"team-a": 8, "team-b": 8, "team-c": 4}
# Who is in which project. Each user gets a token saved in the demo directory.
MEMBERS = {"alice": ("team-a", "team-b"), "bob": ("team-b", "team-c")}

# POSIX sh only (the jobs are real processes on this machine), and one line each so that
# `corral get` shows them readably. The "loss" falls like a training curve's, with a
# little per-job noise from $SEED.
TRAIN_SCRIPT = "; ".join(
    [
        'echo "starting on $(uname -n) with GPUs ${CUDA_VISIBLE_DEVICES:-none}"',
        "i=1",
        "while [ $i -le $EPOCHS ]",
        "do l=$((24000 / (10 + i) + SEED * i % 37))",
        'printf "epoch %d/%d loss=%d.%03d\\n" $i $EPOCHS $((l / 1000)) $((l % 1000))',
        "sleep $STEP_SECONDS",
        "i=$((i + 1))",
        "done",
        'echo "training finished, checkpoint saved"',
    ]
)

FAILING_SCRIPT = "; ".join(
    [
        'echo "loading evaluation set /data/eval/imagenet-val"',
        "sleep $STEP_SECONDS",
        'echo "evaluating checkpoint step-12000"',
        "sleep $STEP_SECONDS",
        'echo "FileNotFoundError: [Errno 2] No such file or directory: /data/eval/labels.csv" >&2',
        "exit 1",
    ]
)

NOTEBOOK_SCRIPT = "; ".join(
    [
        'echo "[notebook] session started on $(uname -n) (a stand-in for Jupyter)"',
        "i=1",
        "while [ $i -le $EPOCHS ]",
        'do echo "[notebook] cell $i executed"',
        "sleep $STEP_SECONDS",
        "i=$((i + 1))",
        "done",
    ]
)


@dataclass(frozen=True)
class DemoJob:
    """One job of the workload; runs ``epochs`` steps of ``step_seconds`` each."""

    name: str
    user: str
    project: str
    gpus: float
    epochs: int
    step_seconds: float
    script: str = TRAIN_SCRIPT
    kind: JobKind = JobKind.TRAIN
    cpus: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    # What the simulated GPUs show for it (`CORRAL_SIM_LOAD`): busy training, an idle
    # notebook, a light evaluation.
    load: str = "util:90,mem:30GiB"

    def request(self, seed: int) -> JobSubmit:
        return JobSubmit(
            name=self.name,
            project=self.project,
            kind=self.kind,
            gpus=self.gpus,
            workers=self.workers,
            cpus=self.cpus,
            command=["sh", "-c", self.script],
            env={
                "EPOCHS": str(self.epochs),
                "STEP_SECONDS": f"{self.step_seconds:g}",
                "SEED": str(seed),
                **({"CORRAL_SIM_LOAD": self.load} if self.load else {}),
                **self.env,
            },
        )

    def describe(self) -> str:
        what = "interactive, " if self.kind is JobKind.INTERACTIVE else ""
        gpus = f"{self.gpus:g} GPU{'s' if self.gpus != 1 else ''}" if self.gpus else "CPU only"
        if self.workers > 1:
            gpus = f"{self.workers} workers x {gpus}"
        return f"{self.user} → {self.project}/{self.name} ({what}{gpus})"


# In submission order; the comments say where the best-fit FIFO policy puts them.
JOBS: tuple[DemoJob, ...] = (
    DemoJob("resnet50-baseline", "alice", "team-a", 4, 40, 3, load="util:97,mem:18GiB"),
    DemoJob("llama-finetune", "bob", "team-b", 8, 60, 3),  # fills one A100 node
    DemoJob("bert-large", "alice", "team-a", 2, 30, 3, load="util:72,mem:14GiB"),
    DemoJob("diffusion-xl", "bob", "team-c", 4, 50, 3),
    DemoJob("eval-broken", "bob", "team-b", 1, 0, 3, script=FAILING_SCRIPT),  # exit 1
    DemoJob("sweep-lr-1e-3", "alice", "team-b", 1, 15, 2),  # the cluster is now full
    DemoJob("data-prep", "bob", "team-c", 0, 20, 2, cpus=1, load=""),  # CPU only: runs anyway
    DemoJob("gpt-pretrain", "alice", "team-a", 8, 80, 3),  # waits for a whole node
    DemoJob(
        "notebook-alice",
        "alice",
        "team-a",
        1,
        60,
        10,
        script=NOTEBOOK_SCRIPT,
        kind=JobKind.INTERACTIVE,
        load="util:3,mem:6GiB",
    ),
    DemoJob("vit-small", "bob", "team-c", 2, 30, 2),
    DemoJob("sweep-lr-3e-4", "alice", "team-b", 1, 20, 2),
    DemoJob("whisper-asr", "bob", "team-b", 2, 40, 3),
    DemoJob("eval-half-a", "bob", "team-c", 0.5, 30, 2, load="util:35,mem:9GiB"),  # share a GPU
    DemoJob("eval-half-b", "bob", "team-c", 0.5, 30, 2, load="util:40,mem:11GiB"),
    DemoJob("ddp-2x2", "alice", "team-a", 2, 40, 3, workers=2),  # a gang: both or neither
)


def run_workload(
    admin: ApiClient,
    client_for: Callable[[str], ApiClient],
    *,
    token_dir: Path,
    echo: Callable[[str], None],
) -> dict[str, Path]:
    """Create the projects, users and jobs; return each user's token file.

    ``client_for(token)`` makes a client acting as the user with that token, so each job
    is submitted by its own user, as it would be on a real cluster.
    """
    echo("Creating projects " + ", ".join(f"{p} (quota {QUOTAS[p]} GPUs)" for p in PROJECTS))
    for project in PROJECTS:
        admin.post("/projects", {"name": project, "quota": QUOTAS[project]})
    token_files: dict[str, Path] = {}
    tokens: dict[str, str] = {}
    for user, projects in MEMBERS.items():
        echo(f"Creating user {user} (member of {', '.join(projects)})")
        admin.post("/users", {"name": user, "role": "user"})
        for project in projects:
            admin.post(f"/projects/{project}/members", {"user": user})
        made = TokenOut.model_validate(
            admin.post(f"/users/{user}/tokens", {"description": "corral demo"})
        )
        tokens[user] = made.token
        token_files[user] = token_dir / f"{user}-token"
        write_secret(token_files[user], made.token)
    echo(f"Submitting {len(JOBS)} jobs")
    clients = {user: client_for(token) for user, token in tokens.items()}
    try:
        for seed, job in enumerate(JOBS, start=1):
            clients[job.user].post(
                "/jobs", job.request(seed).model_dump(mode="json", exclude_none=True)
            )
            echo(f"  {job.describe()}")
    finally:
        for client in clients.values():
            client.close()
    return token_files
