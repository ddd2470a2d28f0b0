"""`python -m server.cli`: the same as `ftq`."""

from server.cli.main import main

main()
