"""``python -m spendstream`` is the ``spendstream`` command."""

from spendstream.cli import main

raise SystemExit(main())
