"""Worker processes on this machine: spawn, tail, signal, settle."""
