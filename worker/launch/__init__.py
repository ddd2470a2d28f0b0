"""Multi-GPU and multi-node runs: torchrun, the ranks, the one end record they add up to."""
