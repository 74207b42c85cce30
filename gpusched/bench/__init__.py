"""Benchmarks: each returns a dict (printed as JSON with --json) and has a table printer."""
