"""Build a serving bundle from trained artifacts, and prove it computes what PyTorch does.

The bundle holds both exported towers, the item vectors the exported item
tower computes, an HNSW index over them, the id mappings, item metadata and
the users' histories, plus ``manifest.json``. Parity is checked before the
bundle is written: on every user's full history, a length-1 history and a
random prefix of it (so at least two histories per user, at least 1,000 in
all), the exported user vectors must match PyTorch's within 1e-5 and give the
same top-10 items for 99.9% of them; a cold user (no history) must give a
finite vector. int8 graphs are never silently lossy: their parity and the
change in test Recall@10 are recorded instead of enforced.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import artifacts as files
from .. import plugins
from ..data.padding import pad_left
from ..errors import TwoTowerError
from ..retrievers import select_top_k

MAX_ABS_DIFF = 1e-5
MIN_TOP10_AGREEMENT = 0.999
COPIED = (files.MAPPINGS, files.ITEMS, files.USER_HISTORIES, files.CONFIG)

log = logging.getLogger("twotower")


@dataclass
class ParityCase:
    """The histories parity is checked on: user index, history items, items to exclude."""

    users: np.ndarray  # [C]
    histories: list[np.ndarray]


def parity_cases(recommender, seed: int = 0) -> ParityCase:
    """Each user's full history, its first item alone, a random prefix; plus a cold user."""
    rng = np.random.default_rng(seed)
    users, histories = [0], [np.zeros(0, dtype=np.int64)]  # the cold user first
    for user_id, history in recommender.histories.items():
        indexes = np.array([recommender.item_index[i] for i in history], dtype=np.int64)
        user = recommender.user_index[user_id]
        cut = int(rng.integers(1, len(indexes) + 1))
        for part in (indexes, indexes[:1], indexes[:cut]):
            users.append(user)
            histories.append(part)
    return ParityCase(np.array(users, dtype=np.int64), histories)


def encode_cases(encode, case: ParityCase, max_len: int, batch: int = 256) -> np.ndarray:
    out = []
    for start in range(0, len(case.users), batch):
        ids, mask = pad_left(case.histories[start : start + batch], max_len)
        out.append(encode(case.users[start : start + batch], ids, mask))
    return np.concatenate(out)


def top10(users: np.ndarray, items: np.ndarray, case: ParityCase) -> np.ndarray:
    exclude = [h - 1 for h in case.histories]
    return select_top_k(users @ items.T, 10, exclude)[0]


def test_recall(encode_users, items: np.ndarray, recommender, max_len: int) -> float:
    """Test Recall@10 through ``encode_users``: condition on all but the last item, hit it."""
    users, histories, targets = recommender.test_queries()
    case = ParityCase(users, histories)
    found = top10(encode_cases(encode_users, case, max_len), items, case)
    return float(np.mean([t in row for t, row in zip(targets, found, strict=True)]))


def check_parity(recommender, towers, quantized: bool) -> dict[str, Any]:
    """Compare the exported towers with the PyTorch model; raise when fp32 misses the bounds."""
    model, max_len = recommender.model, recommender.config.max_history_len
    case = parity_cases(recommender)

    def torch_users(users, ids, mask):
        with torch.no_grad():
            return model.encode_users(
                torch.as_tensor(users), torch.as_tensor(ids), torch.as_tensor(mask)
            ).numpy()

    reference_users = encode_cases(torch_users, case, max_len)
    exported_users = encode_cases(towers.encode_users, case, max_len)
    catalog = np.arange(1, model.num_items + 1)
    reference_items = model.catalog_vectors().numpy()
    exported_items = towers.encode_items(catalog)
    same = top10(reference_users, reference_items, case) == top10(
        exported_users, exported_items, case
    )
    report = {
        "histories_checked": len(case.users),
        "history_lengths": [
            int(min(len(h) for h in case.histories[1:])),
            int(min(max(len(h) for h in case.histories), max_len)),
        ],
        "max_abs_diff": {
            "user_tower": float(np.abs(reference_users - exported_users).max()),
            "item_tower": float(np.abs(reference_items - exported_items).max()),
        },
        "top10_agreement": float(same.all(axis=1).mean()),
        "cold_user_finite": bool(np.isfinite(exported_users[0]).all()),
        "test_recall@10": {
            "torch": test_recall(torch_users, reference_items, recommender, max_len),
            "bundle": test_recall(towers.encode_users, exported_items, recommender, max_len),
        },
    }
    recall = report["test_recall@10"]
    recall["delta"] = recall["bundle"] - recall["torch"]
    if not report["cold_user_finite"]:
        raise TwoTowerError("export failed: a user with no history gets a non-finite vector")
    if not quantized:
        worst = max(report["max_abs_diff"].values())
        if worst > MAX_ABS_DIFF or report["top10_agreement"] < MIN_TOP10_AGREEMENT:
            raise TwoTowerError(
                f"export failed parity: max abs diff {worst:.2e} (limit {MAX_ABS_DIFF:.0e}), "
                f"top-10 agreement {report['top10_agreement']:.4f} "
                f"(limit {MIN_TOP10_AGREEMENT})"
            )
    return report


def quantize_int8(folder: Path, names: tuple[str, ...]) -> None:
    """Dynamic int8 quantization of the ONNX graphs in place, keeping their metadata."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    from .quiet import quiet_exporter

    # ONNX's standard Attention shares its name with onnxruntime's contrib
    # Attention, which the quantizer would turn into an invalid QAttention
    op_types = [op for op in IntegerOpsRegistry if op != "Attention"]
    for name in names:
        source = folder / name
        target = folder / f"{name}.int8"
        metadata = {prop.key: prop.value for prop in onnx.load(str(source)).metadata_props}
        with quiet_exporter(""):
            quantize_dynamic(
                str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=op_types
            )
        quantized = onnx.load(str(target))
        onnx.helper.set_model_props(quantized, metadata)
        onnx.save(quantized, str(source))
        target.unlink()


def default_bundle_dir(recommender, format_name: str, quantize: str | None) -> Path:
    config = recommender.config
    name = f"{config.dataset}-{config.user_encoder}-{format_name}"
    return Path("exports") / (f"{name}-{quantize}" if quantize else name)


def export_bundle(
    artifacts_dir: str | Path,
    out_dir: str | Path | None = None,
    format: str = "onnx",
    quantize: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Export the towers of ``artifacts_dir`` into a bundle; return its folder and manifest."""
    from ..api import load

    if quantize not in (None, "int8"):
        raise TwoTowerError(f"unknown quantization {quantize!r}; available: int8")
    if quantize and format != "onnx":
        raise TwoTowerError("--quantize int8 applies to the onnx format only")
    exporter = plugins.formats().get(format)()
    recommender = load(artifacts_dir)
    target = Path(out_dir) if out_dir else default_bundle_dir(recommender, format, quantize)
    with files.staged_folder(target, "bundle", reads=[recommender.folder]) as folder:
        exporter.export(recommender.model, folder)
        if quantize:
            quantize_int8(folder, exporter.files)
        towers = exporter.load(folder)
        parity = check_parity(recommender, towers, quantized=bool(quantize))
        for name in COPIED:
            shutil.copy2(recommender.folder / name, folder / name)
        item_vectors = towers.encode_items(np.arange(1, recommender.model.num_items + 1))
        files.save_array(folder / files.ITEM_EMBEDDINGS, item_vectors)
        options = plugins.component_options(recommender.config, "hnsw")
        plugins.retrievers().get("hnsw").build(item_vectors, **options).save(folder)
        extra = {
            "source_model_sha256": files.sha256_of(recommender.folder / files.MODEL),
            "format": format,
            "quantization": quantize,
            "graphs": towers.graphs(),
            "max_history_len": recommender.config.max_history_len,
            "num_users": recommender.model.num_users,
            "num_items": recommender.model.num_items,
            "embedding_dim": int(item_vectors.shape[1]),
            "parity": parity,
        }
        if format == "onnx":
            from .onnx import OPSET

            extra["opset"] = OPSET
        manifest = files.write_manifest(folder, "bundle", extra)
    return target, manifest
