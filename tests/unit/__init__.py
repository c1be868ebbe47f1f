"""unit tests (see tests/README)."""
