"""The file checks the daemon runs at submit (no torch): confinement, dataset_info,
data and model files, requirements."""
