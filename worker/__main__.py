"""`python -m worker RUN_DIR`: run the job in RUN_DIR and exit with the recipe's code."""

import signal
import sys

_cancelled_early = False


def _note_sigterm(signum: int, frame: object) -> None:
    # torch and transformers take seconds to import; a cancel in that window must still end with a record.
    global _cancelled_early
    _cancelled_early = True


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _note_sigterm)
    from worker.train import main

    sys.exit(main(sys.argv[1:], cancelled_early=_cancelled_early))
