"""The same supervision on the nodes of a Ray cluster, through one node agent per node."""
