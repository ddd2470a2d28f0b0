"""The training run a worker carries out, stage by stage: validate, set up, train, save, report."""
