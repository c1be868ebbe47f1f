"""Benchmarks: programs that print their conditions and figures (never timed tests)."""
