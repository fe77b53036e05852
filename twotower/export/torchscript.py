"""TorchScript format: ``torch.jit.script`` of each tower, loadable with ``torch.jit.load`` alone.

TorchScript is deprecated in recent PyTorch (every call warns); the
``torch-export`` format is its forward-looking twin.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

USER_FILE = "user_tower.pt"
ITEM_FILE = "item_tower.pt"


class TorchTowers:
    """Runtime over two loaded torch modules, numpy in and out.

    Calls run under ``torch.inference_mode`` (PyTorch's fastest eager mode);
    ``inference_mode=False`` runs them under the more common ``torch.no_grad``.
    """

    def __init__(self, user, item, threads: int = 1, inference_mode: bool = True):
        import torch

        self.torch = torch
        self.user, self.item = user, item
        self.threads = threads
        self.mode = torch.inference_mode if inference_mode else torch.no_grad

    def encode_users(self, user_ids, history, history_mask) -> np.ndarray:
        torch = self.torch
        with self.mode():
            out = self.user(
                torch.as_tensor(np.asarray(user_ids, dtype=np.int64)),
                torch.as_tensor(np.asarray(history, dtype=np.int64)),
                torch.as_tensor(np.asarray(history_mask, dtype=bool)),
            )
        return out.numpy()

    def encode_items(self, item_ids) -> np.ndarray:
        torch = self.torch
        with self.mode():
            return self.item(torch.as_tensor(np.asarray(item_ids, dtype=np.int64))).numpy()

    def graphs(self) -> dict:
        return {}


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
