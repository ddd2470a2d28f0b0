"""`ftq`, the command line: an HTTP client of the daemon (it imports no server code but its own), and the demo."""
