"""The run dir's layout: the names of the files and folders the daemon and a worker both rely on.

Plain names (pathlib aside, no imports): the start gate (worker.spec.gate) and stand-in workers read them
in the first milliseconds of a process, before (or without) pydantic and torch.
"""

from pathlib import Path

# The run-dir layout both sides rely on (DESIGN.md, "The way a job goes").
SPEC_FILE = "spec.json"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "worker.log"
PID_FILE = "worker.pid"
OUTPUT_DIR = "output"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"  # TensorBoard's event files, with report_to: tensorboard
RANKS_DIR = "ranks"  # a multi-GPU run's rank and node reports, and torchrun's per-rank logs

# A worker's log is capped (worker.outputs.log_cap): the daemon says how large in this variable of its environment.
LOG_MAX_BYTES_ENV = "FTQ_WORKER_LOG_MAX_BYTES"
DEFAULT_LOG_MAX_BYTES = 64 << 20


def log_file(node_rank: int) -> str:
    """worker.log, or worker.node{R}.log for node rank R > 0 of a job across nodes (their run dir is shared)."""
    return LOG_FILE if node_rank == 0 else f"worker.node{node_rank}.log"


def older_log(name: str) -> str:
    """The older part of a capped log, which its newer part replaces whenever it fills: worker.log.1."""
    return f"{name}.1"


def pid_file(node_rank: int) -> str:
    """worker.pid, or worker.node{R}.pid for node rank R > 0 of a job across nodes (their run dir is shared)."""
    return PID_FILE if node_rank == 0 else f"worker.node{node_rank}.pid"


def pid_files_in(run_dir: Path) -> list[Path]:
    """Every node's pid file in a run dir: worker.pid and the worker.node{R}.pid of a job across nodes."""
    return sorted(run_dir.glob("worker*.pid"))


def rank_report_file(rank: int) -> str:
    """RANKS_DIR/rank-N.json: what global rank N reported at its end, for the launcher."""
    return f"rank-{rank}.json"


def node_report_file(node_rank: int) -> str:
    """RANKS_DIR/node-R.json: what the torchrun of node rank R > 0 said, for the launcher of node rank 0."""
    return f"node-{node_rank}.json"


def node_log_dir_name(node_rank: int) -> str:
    """RANKS_DIR/node<R>/: where the torchrun of node rank R of a job across nodes keeps its ranks' logs."""
    return f"node{node_rank}"
