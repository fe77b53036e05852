"""torch.export format: ``.pt2`` programs with dynamic batch and history length.

Encoders whose history length cannot be dynamic under ``torch.export`` (the
GRU's recurrence) are exported with a dynamic batch only; the runtime then
left-pads every history to ``max_history_len``, which gives the same vectors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .torchscript import TorchTowers

USER_FILE = "user_tower.pt2"
ITEM_FILE = "item_tower.pt2"
SHAPES_FILE = "torch_export.json"


class PaddedTorchTowers(TorchTowers):
    """Pads histories to a fixed length when the program needs it."""

    def __init__(self, user, item, fixed_length: int | None, threads: int = 1):
        super().__init__(user, item, threads)
        self.fixed_length = fixed_length

    def encode_users(self, user_ids, history, history_mask) -> np.ndarray:
        history = np.asarray(history, dtype=np.int64)
        history_mask = np.asarray(history_mask, dtype=bool)
        if self.fixed_length is not None:
            history, history_mask = (
                history[:, -self.fixed_length :],
                history_mask[:, -self.fixed_length :],
            )
            pad = self.fixed_length - history.shape[1]
            history = np.pad(history, ((0, 0), (pad, 0)))
            history_mask = np.pad(history_mask, ((0, 0), (pad, 0)))
        return super().encode_users(user_ids, history, history_mask)


class TorchExportFormat:
    name = "torch-export"
    files = (USER_FILE, ITEM_FILE, SHAPES_FILE)

    def export(self, model, out_dir: Path) -> list[Path]:
        import torch

        from .quiet import quiet_exporter
        from .towers import example_inputs, towers

        user_tower, item_tower = towers(model)
        user_example, item_example = example_inputs(model)
        batch, length = torch.export.Dim("batch"), torch.export.Dim("history_length")
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
        (out_dir / SHAPES_FILE).write_text(json.dumps({"fixed_history_length": fixed_length}))
        return [out_dir / name for name in self.files]

    def load(self, bundle_dir: Path, threads: int = 1) -> PaddedTorchTowers:
        import torch

        bundle_dir = Path(bundle_dir)
        user = torch.export.load(str(bundle_dir / USER_FILE)).module()
        item = torch.export.load(str(bundle_dir / ITEM_FILE)).module()
        fixed = json.loads((bundle_dir / SHAPES_FILE).read_text())["fixed_history_length"]
        return PaddedTorchTowers(user, item, fixed, threads)
