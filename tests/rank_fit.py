"""``twotower fit`` on one rank of a torchrun group, with a user encoder that owns a
parameter it never uses, for tests/test_distributed.py.

Started by torchrun with the fit's arguments; the encoder is registered for the run
through the plugin hook, as a package would register it. Exits with the CLI's code.
"""

from __future__ import annotations

import sys

from helpers import Spare

from twotower import testing
from twotower.cli import main

if __name__ == "__main__":
    with testing.registered("user_encoders", Spare) as name:
        sys.exit(main([*sys.argv[1:], "--user-encoder", name]))
