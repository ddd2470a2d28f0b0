"""`python -m bench.started_at FILE`: write the time this process got to its first line into FILE.

Ray Jobs' entrypoint in bench.ray: the moment a submitted job's process runs, told the same way as ftq's
workers tell theirs (their `start` record).
"""

import sys
import time

if __name__ == "__main__":
    started = time.time()
    with open(sys.argv[1], "w") as f:
        f.write(repr(started))
