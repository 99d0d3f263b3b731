"""``python -m reidlab.ecn``: see :mod:`reidlab.ecn.cli`."""
from .cli import main

raise SystemExit(main())
