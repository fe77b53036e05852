"""``twotower fit`` on one rank of a torchrun group, with a user encoder that owns a
parameter it never uses, for tests/test_distributed.py.

Started by torchrun with the fit's arguments; the encoder is registered for the run
through the plugin hook, as a package would register it. Exits with the CLI's code.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from twotower import testing
from twotower.cli import main
from twotower.towers.mean import MeanEncoder


class Spare(MeanEncoder):
    def __init__(self, config, item_embedding, num_users):
        super().__init__(config, item_embedding, num_users)
        self.spare = nn.Parameter(torch.zeros(3))


if __name__ == "__main__":
    with testing.registered("user_encoders", Spare) as name:
        sys.exit(main([*sys.argv[1:], "--user-encoder", name]))
