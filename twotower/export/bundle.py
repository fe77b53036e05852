"""Build a serving bundle from trained artifacts (exports/README.md).

The bundle holds both exported towers, the item vectors the exported item
tower computes, the indexes of the retrievers that are built ahead
(``prebuilt``: HNSW), the id mappings, item metadata and the users'
histories, plus ``manifest.json``. The format writes and loads the towers
(and quantizes them, if it offers that); ``parity.py`` proves them against
PyTorch before anything is kept.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts as files
from .. import plugins
from ..contracts import Calibration, capability, scheme_names
from ..errors import TwoTowerError, TwoTowerWarning, refused_as
from ..recommendation import (
    CheckedTowers,
    Recommender,
    prebuilt_indexes,
    save_indexes,
    user_inputs,
)
from .parity import check_parity

COPIED = (files.MAPPINGS, files.ITEMS, files.USER_HISTORIES, files.CONFIG)
ITEM_BATCH = 8192  # items of one calibration batch


def offered_quantizations() -> dict[str, tuple[str, ...]]:
    """Each registered format's quantization schemes (most offer none). A format whose
    ``quantizations`` is not a list of scheme names offers none, with a warning: the
    export command's flags must not break for every format."""
    registry = plugins.formats()
    offered = {}
    for name in registry.names():
        schemes = capability(registry.get(name), "quantizations")
        if not scheme_names(schemes):
            warnings.warn(
                f"format {name!r}: quantizations must be a list of scheme names, not "
                f"{schemes!r}; it offers none",
                TwoTowerWarning,
                stacklevel=2,
            )
            schemes = ()
        offered[name] = tuple(schemes)
    return offered


def check_quantization(format: str, quantize: str | None) -> None:
    """``quantize`` must be a scheme some format offers, and ``format`` one of them."""
    if quantize is None:
        return
    offered = offered_quantizations()
    known = sorted({scheme for schemes in offered.values() for scheme in schemes})
    if quantize not in known:
        raise TwoTowerError(
            f"unknown quantization {quantize!r}; available: {', '.join(known) or 'none'}"
        )
    if quantize not in offered[format]:
        owners = ", ".join(name for name, schemes in offered.items() if quantize in schemes)
        raise TwoTowerError(f"--quantize {quantize} applies to the {owners} format only")


def default_bundle_dir(config, format_name: str, quantize: str | None) -> Path:
    name = f"{config.dataset}-{config.user_encoder}-{format_name}"
    return Path("exports") / (f"{name}-{quantize}" if quantize else name)


def exported_from(folder: Path, artifacts_dir: Path, format: str, quantize: str | None) -> bool:
    """Whether ``folder`` is a sound bundle of ``artifacts_dir``'s very weights, in this
    format and quantization, written by these very library versions."""
    wanted = {
        "source_model_sha256": files.sha256_of(Path(artifacts_dir) / files.MODEL),
        "format": format,
        "quantization": quantize,
        "versions": files.library_versions(),
    }
    try:
        manifest = files.read_manifest(folder, "bundle")
    except TwoTowerError:
        return False
    return all(manifest.get(key) == value for key, value in wanted.items())


def export_bundle(
    artifacts_dir: str | Path,
    out_dir: str | Path | None = None,
    format: str = "onnx",
    quantize: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Export the towers of ``artifacts_dir`` into a bundle; return its folder and manifest."""
    from ..api import load

    make_exporter = plugins.formats().get(format)
    with refused_as(f"format {format!r} could not be made"):
        exporter = make_exporter()
    check_quantization(format, quantize)
    recommender = load(artifacts_dir)
    model = recommender.towers.model
    target = Path(out_dir) if out_dir else default_bundle_dir(recommender.config, format, quantize)
    with files.staged_folder(target, "bundle", reads=[recommender.folder]) as folder:
        with refused_as(f"format {format!r} could not export the towers"):
            written = exporter.export(model, folder)
        check_written(format, written, folder)
        if quantize:
            inputs = calibration(recommender)
            with refused_as(f"format {format!r} could not quantize the towers ({quantize})"):
                exporter.quantize(folder, quantize, inputs)
        with refused_as(f"format {format!r} could not load the towers it exported"):
            towers = CheckedTowers(format, exporter.load(folder), model.vector_dim)
        item_vectors = towers.encode_items(np.arange(1, model.num_items + 1))
        parity = check_parity(recommender, towers, item_vectors, quantized=bool(quantize))
        for name in COPIED:
            shutil.copy2(recommender.folder / name, folder / name)
        files.save_array(folder / files.ITEM_EMBEDDINGS, item_vectors)
        save_indexes(prebuilt_indexes(item_vectors, recommender.config), folder)
        extra = {
            "source_model_sha256": files.sha256_of(recommender.folder / files.MODEL),
            "format": format,
            "quantization": quantize,
            "graphs": towers.graphs(),
            "max_history_len": recommender.max_history_len,
            "num_users": model.num_users,
            "num_items": model.num_items,
            "embedding_dim": int(item_vectors.shape[1]),
            "parity": parity,
        }
        if capability(exporter, "opset") is not None:
            extra["opset"] = exporter.opset
        manifest = files.write_manifest(folder, "bundle", extra)
    return target, manifest


def check_written(format: str, written: Any, folder: Path) -> None:
    """``export`` returns the files it wrote: at least one, each inside ``folder``, none under
    a name the bundle keeps for its own files (copied in after the towers)."""
    broke = f"format {format!r} broke the export contract: it"
    listed = isinstance(written, list | tuple) and written
    if not listed or not all(isinstance(p, str | os.PathLike) for p in written):
        raise TwoTowerError(f"{broke} returned {written!r}, not the list of files it wrote")
    root = Path(os.path.abspath(folder))
    reserved = {root / name for name in (*COPIED, files.ITEM_EMBEDDINGS, files.MANIFEST)}
    for path in (Path(os.path.abspath(p)) for p in written):  # as the format opened them
        if not (path.is_relative_to(root) and path.is_file()):
            raise TwoTowerError(f"{broke} returned {str(path)!r}, not a file in the bundle")
        if path in reserved:
            raise TwoTowerError(f"{broke} wrote {path.name}, a file the bundle keeps for its own")


def calibration(recommender: Recommender) -> Calibration:
    """What a bundle serves, for static quantization: every user's test query (its history
    without the last item, as parity checks) and every item, in batches."""
    users, histories, _ = recommender.test_queries()
    items = np.arange(1, len(recommender.item_ids) + 1, dtype=np.int64)
    return Calibration(
        user_batches=list(user_inputs(users, histories, recommender.max_history_len)),
        item_batches=[
            items[start : start + ITEM_BATCH] for start in range(0, len(items), ITEM_BATCH)
        ],
    )
