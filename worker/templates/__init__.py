"""LLaMA-Factory's prompt templates and tool formats, as data and plain functions (no torch)."""
