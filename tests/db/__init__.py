"""db tests (see tests/README)."""
