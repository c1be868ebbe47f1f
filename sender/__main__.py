"""`python -m sender` is the same as the `sender` console script."""

from sender.cli import main

raise SystemExit(main())
