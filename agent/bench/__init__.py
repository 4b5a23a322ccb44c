"""Measurements of the agent: the load bench, the soaks and stream-level accuracy (never imported by the runtime)."""
