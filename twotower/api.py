"""The Python API over a run: fit, evaluate, load.

``twotower fit``, ``evaluate`` and ``recommend`` (over an artifacts folder)
call these; export, bundles and the benchmarks have modules of their own.
The CLI only parses flags, calls the API and renders the results.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import artifacts as files
from . import distributed, plugins
from .config import MACHINE_SETTINGS, TwoTowerConfig
from .data.dataset import Dataset, check_dataset
from .data.split import Split, make_split
from .errors import TwoTowerError, refused_as
from .evaluation import evaluate_model, evaluate_popularity
from .metrics import metric_ks
from .progress import TrainingProgress, note
from .recommendation import (
    Recommender,
    check_threads,
    open_retriever,
    prebuilt_indexes,
    read_items,
    read_mappings,
    save_indexes,
    saved_config,
)
from .towers.model import TwoTowerModel
from .towers.runtime import ModelTowers
from .train import train
from .validation import validate


@dataclass
class FitResult:
    config: TwoTowerConfig
    artifacts_dir: Path
    best_epoch: int
    valid: dict[str, float]  # best validation metrics
    test: dict[str, Any]  # test_metrics.json
    popularity: dict[str, dict[str, float]]  # {"valid": ..., "test": ...}
    log: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def check_device(device: str) -> None:
    """Fail early, in one line, on a device this machine does not have (or cannot compute on:
    a ``meta`` tensor holds no data to copy back)."""
    try:
        torch.zeros(1, device=device).cpu()
    except Exception as exc:  # torch's own types vary by backend (hpu: ModuleNotFoundError)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = reason if len(reason) <= 120 else reason[:117] + "..."
        raise TwoTowerError(f"device {device!r} is not usable here ({reason})") from None


def load_dataset(config: TwoTowerConfig) -> Dataset:
    """The dataset plugin's table, checked: a loader's failure or a table off the contract
    is one line naming the dataset."""
    loader = plugins.datasets().get(config.dataset)
    with refused_as(f"dataset {config.dataset!r} could not be loaded"):
        dataset = loader(config)
    return check_dataset(dataset, config.dataset)


def prepare(config: TwoTowerConfig) -> Split:
    """Dataset plugin -> implicit filter -> temporal split (PROTOCOL.md)."""
    split = make_split(load_dataset(config), config.min_rating, config.min_user_positives)
    if split.undescribed and distributed.is_main_process():
        count, examples = len(split.undescribed), ", ".join(map(repr, split.undescribed[:3]))
        note(
            f"{count:,} of {split.num_items:,} items have no row in the items table "
            f"(e.g. {examples}): they have no title or genres"
        )
    return split


def check_k_eval(config: TwoTowerConfig, split: Split) -> None:
    """A K that reaches every item a test query ranks makes every target a hit: Recall@K
    would be 1. That is the whole catalog, less the user's earlier items when they are
    masked. The headline K is refused; the protocol's other Ks (reported whatever the
    catalog) are named in a note."""
    k_eval, num_items = config.k_eval, split.num_items
    if k_eval >= num_items:
        raise TwoTowerError(
            f"k_eval ({k_eval}) must be below the number of items ({num_items}), "
            "or every target counts as a hit"
        )
    ranked = ranked_items(split, "test", config.mask_seen)
    if k_eval >= ranked.max():
        raise TwoTowerError(
            f"k_eval ({k_eval}) must be below {ranked.max()}, the most items a test query "
            f"ranks (the {num_items} items less the user's earlier ones), or every target "
            "counts as a hit"
        )
    if not distributed.is_main_process():
        return
    whole = [f"@{k}" for k in metric_ks(k_eval) if k >= num_items]
    if whole:
        note(
            f"the metrics {', '.join(whole)} rank the whole catalog of {num_items} items: "
            "every target counts as a hit there"
        )
    reach = [f"@{k} ({int((ranked <= k).sum())})" for k in metric_ks(k_eval) if k < num_items]
    reach = [entry for entry in reach if not entry.endswith("(0)")]
    if reach:
        note(
            f"the metrics {', '.join(reach)} rank every item some of the {len(ranked)} users "
            "have not seen (as many users in brackets): their targets count as hits there"
        )


def ranked_items(split: Split, stage: str, mask_seen: bool) -> np.ndarray:
    """How many items each user's query of ``stage`` is ranked among: the catalog, less
    the user's earlier items when they are masked (PROTOCOL.md)."""
    if not mask_seen:
        return np.full(split.num_users, split.num_items)
    users = np.arange(1, split.num_users + 1)
    before = split.earlier_items.position(users, split.targets(stage))
    earlier = [
        len(np.unique(items[:count])) for items, count in zip(split.sequences, before, strict=True)
    ]
    return split.num_items - np.array(earlier, dtype=np.int64)


def input_files(config: TwoTowerConfig) -> list[Path]:
    """The data files a run reads, which its artifacts must never overwrite."""
    return [Path(path) for path in (config.interactions, config.items) if path]


def fit(config: TwoTowerConfig, progress: bool = True) -> FitResult:
    """Train on ``config``'s dataset, evaluate on test once, and write the artifacts.

    Settings are validated and the artifacts folder is claimed (checked and
    locked) before any data is read, so a run that cannot finish fails first.
    Under torchrun every rank trains and evaluates its share, every rank
    returns the same result, and rank 0 alone claims and writes the folder.
    """
    started = time.perf_counter()
    config = validate(config)
    if not isinstance(progress, bool):  # "no" would be taken as true
        raise TwoTowerError(f"progress must be True or False, not {progress!r}")
    check_device(config.device)
    target = config.resolved_artifacts_dir
    with distributed.session(config.device) as context, contextlib.ExitStack() as stack:
        distributed.agree(
            lambda: config.fingerprint(leave_out=MACHINE_SETTINGS),
            context,
            "the settings of rank(s) {ranks} differ from rank 0's: start every machine "
            "with the same twotower command",
        )
        if context.distributed and context.is_main:
            backend = "nccl" if context.device.type == "cuda" else "gloo"
            note(f"data-parallel training on {context.world_size} ranks ({backend})")

        def claim_and_read() -> tuple[Path | None, Split]:
            claim = files.staged_folder(
                target, "artifacts", reads=input_files(config), keeps=[Path(config.data_dir)]
            )
            folder = stack.enter_context(claim) if context.is_main else None
            return folder, prepare(config)

        folder, split = distributed.together(claim_and_read, context)
        distributed.agree(
            lambda: split.fingerprint,
            context,
            "the data rank(s) {ranks} read differ from rank 0's: every machine must "
            "read the same files",
        )
        check_k_eval(config, split)
        shown = progress and context.is_main
        with TrainingProgress(config.epochs, f"recall@{config.k_eval}", enabled=shown) as bar:
            result = train(config, split, bar.epoch_done, bar.step, context)
        test = evaluate_model(result.model, split, "test", config, context)
        test.update(
            num_users=split.num_users,
            num_items=split.num_items,
            mask_seen=config.mask_seen,
            best_epoch=result.best_epoch,
        )
        stages = ("valid", "test")
        popularity = {stage: evaluate_popularity(split, stage, config) for stage in stages}
        if folder is not None:
            write_artifacts(folder, config, split, result.model, result.log, test, popularity)
    return FitResult(
        config,
        target,
        result.best_epoch,
        result.best_valid,
        test,
        popularity,
        result.log,
        time.perf_counter() - started,
    )


def write_artifacts(folder, config, split, model, train_log, test, popularity) -> None:
    """Write every artifact into the staging ``folder`` (see artifacts.staged_folder)."""
    vectors = model.catalog_vectors().cpu().numpy()
    # native indexes before any file: a crash inside one leaves an empty staging folder,
    # which the next run writing this target removes
    indexes = prebuilt_indexes(vectors, config)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "num_users": split.num_users,
            "num_items": split.num_items,
            "num_genres": len(split.genre_names),
        },
        folder / files.MODEL,
    )
    files.write_json(folder / files.CONFIG, located(config).to_dict())
    files.save_array(folder / files.ITEM_EMBEDDINGS, vectors)
    files.write_json(folder / files.MAPPINGS, {"users": split.user_ids, "items": split.item_ids})
    items = [
        {"item_id": item, "title": title, "genres": genres}
        for item, title, genres in zip(split.item_ids, split.titles, split.genres, strict=True)
    ]
    files.write_json(folder / files.ITEMS, {"genres": split.genre_names, "items": items})
    histories = {
        user: [split.item_ids[i - 1] for i in sequence]
        for user, sequence in zip(split.user_ids, split.sequences, strict=True)
    }
    files.write_json(folder / files.USER_HISTORIES, histories)
    files.write_jsonl(folder / files.TRAIN_LOG, train_log)
    files.write_json(folder / files.TEST_METRICS, test)
    files.write_json(folder / files.BASELINE_METRICS, popularity)
    save_indexes(indexes, folder)  # last: an index may add files, not change these
    # the run's retriever must open and answer before the folder replaces anything
    open_retriever(config.retriever, folder, vectors, config)
    extra = {"config": located(config).to_dict(), "data_sha256": split.fingerprint}
    files.write_manifest(folder, "artifacts", extra)


def located(config: TwoTowerConfig) -> TwoTowerConfig:
    """``config`` with its data paths absolute, as the artifacts keep it: ``evaluate``
    finds the data from whatever folder it runs in."""
    paths = ("data_dir", "interactions", "items")
    given = {name: getattr(config, name) for name in paths}
    return config.replace(
        **{name: os.path.abspath(path) for name, path in given.items() if path is not None}
    )


def load_model(folder: Path, config: TwoTowerConfig) -> TwoTowerModel:
    checkpoint = read_checkpoint(folder)
    genres = np.zeros((checkpoint["num_items"] + 1, checkpoint["num_genres"]), dtype=np.float32)
    encoder_class = plugins.user_encoders().get(config.user_encoder)
    model = TwoTowerModel(
        config, checkpoint["num_users"], checkpoint["num_items"], genres, encoder_class
    )
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except Exception as exc:  # the weights do not have the shapes config.json describes
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise TwoTowerError(
            f"{folder / files.MODEL} does not fit {folder / files.CONFIG} ({first}): "
            "the files are not from one fit"
        ) from None
    return model.eval()


def read_checkpoint(folder: Path) -> dict[str, Any]:
    """``model.pt`` as fit writes it: the weights, and the user, item and genre counts of
    the folder's own mappings.json and items.json (checked before a table of that size
    is made)."""
    path = folder / files.MODEL
    with refused_as(f"{path} cannot be read as a twotower model"):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    mappings = read_mappings(folder)
    expected = {
        "num_users": len(mappings["users"]),
        "num_items": len(mappings["items"]),
        "num_genres": len(read_items(folder)["genres"]),
    }
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict)):
        raise TwoTowerError(f"{path} does not hold a twotower model (no state_dict)")
    got = {name: checkpoint.get(name) for name in expected}
    if got != expected:
        raise TwoTowerError(
            f"{path} holds a model of {got} but the folder's files describe {expected}: "
            "the files are not from one fit"
        )
    return checkpoint


def load(artifacts_dir: str | Path, retriever: str | None = None, threads: int = 1) -> Recommender:
    """The recommendation core over a trained model's PyTorch towers (checksums verified).

    The same core, defaults and options as ``serving.load_bundle``: ``retriever``
    defaults to the fit's ``retriever`` setting, the user tower computes on
    ``threads`` threads; ``recommender.towers.model`` is the ``TwoTowerModel``.
    """
    folder = files.folder_path(artifacts_dir)
    threads = check_threads(threads)
    before = files.identity(folder)
    manifest = files.read_manifest(folder)
    config = saved_config(folder)
    towers = ModelTowers(load_model(folder, config), threads)
    recommender = Recommender(folder, manifest, config, towers, retriever)
    files.check_unchanged(folder, before)  # every file read is from the folder verified
    return recommender


def evaluate(
    artifacts_dir: str | Path,
    mask_seen: bool | None = None,
    data_dir: str | None = None,
    interactions: str | None = None,
    items: str | None = None,
) -> dict[str, Any]:
    """Re-evaluate saved artifacts on the test split, re-read from the dataset.

    ``mask_seen`` overrides the saved setting; ``data_dir``, ``interactions``
    and ``items`` point at the data when it moved since the fit. The data
    must be the data of the fit: its fingerprint is compared with the one
    the manifest recorded, so a changed file is refused, never scored.
    """
    recommender = load(artifacts_dir)
    overrides = {
        "download": False,
        "mask_seen": mask_seen,
        "data_dir": data_dir,
        "interactions": interactions,
        "items": items,
    }
    given = {key: value for key, value in overrides.items() if value is not None}
    config = validate(recommender.config.replace(**given))
    pointed = any(key in given for key in ("data_dir", "interactions", "items"))
    try:
        split = prepare(config)
    except TwoTowerError as exc:
        if pointed:
            raise
        raise TwoTowerError(  # the fit's data paths, as the fit was given them
            f"{exc} (the data {recommender.folder} was fitted on; if it moved, point evaluate "
            "at it with --data-dir, --interactions or --items)"
        ) from None
    if split.fingerprint != recommender.manifest["data_sha256"]:
        raise TwoTowerError(
            f"the data ({describe_data(config)}) is not the data {recommender.folder} was "
            f"fitted on (fingerprint {split.fingerprint[:12]}, fitted on "
            f"{recommender.manifest['data_sha256'][:12]}); point evaluate at that data"
        )
    check_k_eval(config, split)
    metrics = {
        "model": evaluate_model(recommender.towers.model, split, "test", config),
        "popularity": evaluate_popularity(split, "test", config),
    }
    metrics["mask_seen"] = config.mask_seen
    metrics["num_users"], metrics["num_items"] = split.num_users, split.num_items
    return json.loads(json.dumps(metrics))


def describe_data(config: TwoTowerConfig) -> str:
    files_read = input_files(config)
    if files_read:
        return ", ".join(map(str, files_read))
    return f"dataset {config.dataset!r} in {config.data_dir}"
