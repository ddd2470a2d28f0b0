"""Units the daemon and the worker both count in."""

GIB = 1 << 30
