"""torch.export format: ``.pt2`` programs with dynamic batch and history length.

Encoders whose history length cannot be dynamic under ``torch.export`` (the
GRU's recurrence) are exported with a dynamic batch only; the runtime then
left-pads every history to ``max_history_len``, which gives the same vectors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..towers.runtime import TorchTowers
from .quiet import quiet_exporter

USER_FILE = "user_tower.pt2"
ITEM_FILE = "item_tower.pt2"
SHAPES_FILE = "torch_export.json"


class PaddedTorchTowers(TorchTowers):
    """Keeps histories within the program's length, padding them to a fixed one if needed."""

    def __init__(self, user, item, max_length: int, fixed_length: int | None, threads: int = 1):
        super().__init__(user, item, threads)
        self.max_length, self.fixed_length = max_length, fixed_length

    def encode_users(self, user_ids, history, history_mask) -> np.ndarray:
        history = np.asarray(history, dtype=np.int64)[:, -self.max_length :]
        history_mask = np.asarray(history_mask, dtype=bool)[:, -self.max_length :]
        if self.fixed_length is not None:
            pad = self.fixed_length - history.shape[1]
            history = np.pad(history, ((0, 0), (pad, 0)))
            history_mask = np.pad(history_mask, ((0, 0), (pad, 0)))
        return super().encode_users(user_ids, history, history_mask)


class TorchExportFormat:
    name = "torch-export"
    files = (USER_FILE, ITEM_FILE, SHAPES_FILE)

    def export(self, model, out_dir: Path) -> list[Path]:
        import torch

        from .towers import example_inputs, towers

        user_tower, item_tower = towers(model)
        user_example, item_example = example_inputs(model)
        batch = torch.export.Dim("batch")
        length = torch.export.Dim("history_length", max=model.max_history_len)
        fixed_length = None
        with quiet_exporter():
            try:
                user_program = torch.export.export(
                    user_tower,
                    user_example,
                    dynamic_shapes=({0: batch}, {0: batch, 1: length}, {0: batch, 1: length}),
                )
            except Exception:  # the history length cannot be symbolic for this encoder
                fixed_length = model.max_history_len
                user_example, _ = example_inputs(model, length=fixed_length)
                user_program = torch.export.export(
                    user_tower, user_example, dynamic_shapes=({0: batch}, {0: batch}, {0: batch})
                )
            item_program = torch.export.export(
                item_tower, item_example, dynamic_shapes=({0: torch.export.Dim("items")},)
            )
        out_dir = Path(out_dir)
        torch.export.save(user_program, str(out_dir / USER_FILE))
        torch.export.save(item_program, str(out_dir / ITEM_FILE))
        shapes = {"max_history_len": model.max_history_len, "fixed_history_length": fixed_length}
        (out_dir / SHAPES_FILE).write_text(json.dumps(shapes))
        return [out_dir / name for name in self.files]

    def load(self, bundle_dir: Path, threads: int = 1) -> PaddedTorchTowers:
        import torch

        bundle_dir = Path(bundle_dir)
        with quiet_exporter():  # a file it cannot read is the error's to say, not a warning's
            user = torch.export.load(str(bundle_dir / USER_FILE)).module()
            item = torch.export.load(str(bundle_dir / ITEM_FILE)).module()
        shapes = json.loads((bundle_dir / SHAPES_FILE).read_text())
        return PaddedTorchTowers(
            user, item, shapes["max_history_len"], shapes["fixed_history_length"], threads
        )
