"""``python -m certgate.stores``: see :mod:`certgate.stores.cli`."""

import sys

from .cli import main

sys.exit(main())
