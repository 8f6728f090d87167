"""``python -m bridgetower`` = the ``bridgetower`` command."""

import sys

from .cli import main

sys.exit(main())
