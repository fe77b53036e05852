"""TorchScript format: ``torch.jit.script`` of each tower, loadable with ``torch.jit.load`` alone.

TorchScript is deprecated in recent PyTorch (every call warns); the
``torch-export`` format is its forward-looking twin.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ..towers.runtime import TorchTowers

USER_FILE = "user_tower.pt"
ITEM_FILE = "item_tower.pt"


class TorchScriptFormat:
    name = "torchscript"
    files = (USER_FILE, ITEM_FILE)

    def export(self, model, out_dir: Path) -> list[Path]:
        import torch

        from .towers import towers

        written = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for module, file in zip(towers(model), self.files, strict=True):
                path = Path(out_dir) / file
                torch.jit.save(torch.jit.script(module), str(path))
                written.append(path)
        return written

    def load(self, bundle_dir: Path, threads: int = 1) -> TorchTowers:
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            user = torch.jit.load(str(Path(bundle_dir) / USER_FILE)).eval()
            item = torch.jit.load(str(Path(bundle_dir) / ITEM_FILE)).eval()
        return TorchTowers(user, item, threads)
