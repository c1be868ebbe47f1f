"""Campaign email sender daemon: PostgreSQL queue in, Amazon SES v2 out."""

__version__ = "0.1.0"
