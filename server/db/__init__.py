"""Persistence: the engine, the tables, the store that carries out the scheduler's decisions, the event log."""
