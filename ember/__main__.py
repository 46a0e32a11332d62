"""``python -m ember``: the command line (see ``ember.cli``)."""
from .cli import main

raise SystemExit(main())
