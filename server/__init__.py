"""The daemon: the HTTP API, its services, the database, live events and metrics, and the CLI that talks to it."""
