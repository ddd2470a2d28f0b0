"""What the API does, one function per request: submit, lifecycle, reads, admission, paths, compare."""
