"""`sender demo` and what it runs on: the demo runner, the fake SES and SQS, the embedded database.

Tests and benchmarks use the fakes too; the production image imports none of this (the embedded
PostgreSQL comes with the `demo` extra).
"""
