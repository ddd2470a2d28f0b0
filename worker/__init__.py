"""The training worker: `python -m worker RUN_DIR` reads its spec and writes its run dir, nothing else."""
