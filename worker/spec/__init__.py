"""The contract between daemon and worker: the job spec in LLaMA-Factory's keys, the run dir, its records and gate."""
