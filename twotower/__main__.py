"""``python -m twotower``: the CLI, as torchrun starts it (``torchrun ... -m twotower fit``)."""

import sys

from .cli import main

sys.exit(main())
