"""Fault and hostile-input tests: one per row of docs/reliability.md."""
