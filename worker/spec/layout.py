"""The run dir's layout and the worker's exit codes: what the daemon and a worker both rely on.

Plain constants, no imports: the start gate (worker.spec.gate) and stand-in workers read them
in the first milliseconds of a process, before (or without) pydantic and torch.
"""

# The run-dir layout both sides rely on (DESIGN.md, "The way a job goes").
SPEC_FILE = "spec.json"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "worker.log"
OUTPUT_DIR = "output"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"  # TensorBoard's event files, with report_to: tensorboard

# Exit codes the worker uses, so the supervisor can tell why it ended without
# parsing its log. 0 is success; anything else not listed is an unexpected crash.
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_OOM = 3
EXIT_NOT_STARTED = 4  # the daemon died before it told the worker to go: nothing was trained
EXIT_CANCELLED = 143  # 128 + SIGTERM, what a shell reports for a process ended by it
