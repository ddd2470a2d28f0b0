"""GPU probes: NVML, the fake one for machines without GPUs, and a cache that shares one look."""
