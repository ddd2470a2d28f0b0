"""`python -m worker RUN_DIR`: run the job in RUN_DIR and exit with the recipe's code.

A multi-GPU job (or a DeepSpeed one) is started again under torchrun by
worker.launch.torchrun; each rank then comes back here and runs the recipe. A job across
nodes has one of these per node (FTQ_NNODES, FTQ_NODE_RANK, ...: worker.launch.nodes).
Its output, and that of everything it starts, goes to its log through worker.outputs.log_cap, which keeps
the log within FTQ_WORKER_LOG_MAX_BYTES.
"""

import os
import signal
import sys
from pathlib import Path

_cancelled_early = False


def _note_sigterm(signum: int, frame: object) -> None:
    # torch and transformers take seconds to import; a cancel in that window must still end with a record.
    global _cancelled_early
    _cancelled_early = True


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _note_sigterm)
    from worker.outputs.log_cap import cap_output, log_max_bytes

    # Before anything prints: the log the daemon gave us (and every child's output) is capped from here on.
    cap_output(log_max_bytes(os.environ))
    from worker.spec.gate import pass_gate, refuse_to_start

    if len(sys.argv) == 2 and Path(sys.argv[1]).is_dir() and not pass_gate(Path(sys.argv[1])):
        from worker.launch.torchrun import stand_aside
        from worker.spec.exits import EXIT_NOT_STARTED
        from worker.spec.gate import NOT_STARTED

        # a node rank > 0 of a job across nodes leaves the one record to node rank 0, and tells it why
        aside = stand_aside(Path(sys.argv[1]), os.environ, NOT_STARTED, EXIT_NOT_STARTED)
        sys.exit(aside if aside is not None else refuse_to_start(Path(sys.argv[1])))
    from worker.launch.processes import die_with_parent
    from worker.launch.rank_report import RANKS_DIR_ENV, is_rank
    from worker.launch.torchrun import SPEC_INVALID_ASIDE, launch, launch_plan, read_spec, stand_aside
    from worker.spec.exits import EXIT_BAD_INPUT

    if is_rank(os.environ):
        if RANKS_DIR_ENV in os.environ:
            # torchrun gives each rank a session of its own, out of reach of the daemon's signals to the
            # job's process group: if torchrun is killed outright, its ranks must not outlive it.
            die_with_parent(signal.SIGKILL)
    elif len(sys.argv) == 2:
        nproc = launch_plan(read_spec(Path(sys.argv[1])), os.environ)
        if nproc is not None:
            sys.exit(launch(Path(sys.argv[1]), nproc, cancel_requested=lambda: _cancelled_early))
        # a node rank > 0 without a valid spec: node rank 0 reports it
        aside = stand_aside(Path(sys.argv[1]), os.environ, SPEC_INVALID_ASIDE, EXIT_BAD_INPUT)
        if aside is not None:
            sys.exit(aside)

    from worker.run.recipe import main

    sys.exit(main(sys.argv[1:], cancelled_early=_cancelled_early))
