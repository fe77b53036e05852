"""Torch modules behind the ``contracts.Towers`` runtime: numpy in, numpy out.

The recommendation core, export parity and the bench call every runtime the
same way; this adapts the towers of a trained model (``ModelTowers``) and
the TorchScript and ``torch.export`` programs to it. Importing it does not
import torch (its callers have).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np


class TorchTowers:
    """Runtime over two loaded torch modules, numpy in and out.

    Calls run under ``torch.inference_mode`` (PyTorch's fastest eager mode);
    ``inference_mode=False`` runs them under the more common ``torch.no_grad``.
    Each call computes on ``threads`` intra-op threads (None: as many as torch
    has). torch's thread pool belongs to the whole process, so the count is
    set for the call and put back afterwards; a call that finds it right
    changes nothing.
    """

    def __init__(self, user, item, threads: int | None = None, inference_mode: bool = True):
        import torch

        self.torch = torch
        self.user, self.item = user, item
        self.threads = threads
        self.mode = torch.inference_mode if inference_mode else torch.no_grad

    @contextlib.contextmanager
    def computing(self) -> Iterator[None]:
        """The block runs in the towers' mode on ``threads`` threads."""
        before = self.torch.get_num_threads()
        change = self.threads is not None and self.threads != before
        if change:
            self.torch.set_num_threads(self.threads)
        try:
            with self.mode():
                yield
        finally:
            if change:
                self.torch.set_num_threads(before)

    def encode_users(self, user_ids, history, history_mask) -> np.ndarray:
        torch = self.torch
        with self.computing():
            out = self.user(
                torch.as_tensor(np.asarray(user_ids, dtype=np.int64)),
                torch.as_tensor(np.asarray(history, dtype=np.int64)),
                torch.as_tensor(np.asarray(history_mask, dtype=bool)),
            )
        return out.numpy()

    def encode_items(self, item_ids) -> np.ndarray:
        torch = self.torch
        with self.computing():
            return self.item(torch.as_tensor(np.asarray(item_ids, dtype=np.int64))).numpy()

    def graphs(self) -> dict:
        return {}  # torch modules: no graph description to record


class ModelTowers(TorchTowers):
    """A trained ``TwoTowerModel``'s own towers; ``model`` serves what needs PyTorch itself
    (evaluation, export)."""

    def __init__(self, model, threads: int | None = None, inference_mode: bool = True):
        self.model = model.eval()
        super().__init__(model.encode_users, model.encode_items, threads, inference_mode)
