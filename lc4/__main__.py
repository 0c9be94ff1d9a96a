"""``python -m lc4``: the same as the ``lc4`` command."""
from lc4.cli import main

raise SystemExit(main())
