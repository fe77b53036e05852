"""The Python API behind every command: fit, evaluate, load.

The CLI only parses flags, calls these and renders the results.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import artifacts as files
from . import distributed, plugins
from .config import TwoTowerConfig
from .data.dataset import Dataset
from .data.padding import pad_left
from .data.split import Split, make_split
from .errors import TwoTowerError
from .evaluation import evaluate_model, evaluate_popularity
from .progress import TrainingProgress
from .recommendation import Recommendation, check_k, ranked, require_finite, unknown_user
from .towers.model import TwoTowerModel
from .train import train
from .validation import validate

log = logging.getLogger("twotower")


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
    except (RuntimeError, AssertionError, NotImplementedError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = reason if len(reason) <= 120 else reason[:117] + "..."
        raise TwoTowerError(f"device {device!r} is not usable here ({reason})") from None


def load_dataset(config: TwoTowerConfig) -> Dataset:
    return plugins.datasets().get(config.dataset)(config)


def prepare(config: TwoTowerConfig) -> Split:
    """Dataset plugin -> implicit filter -> temporal split (PROTOCOL.md)."""
    return make_split(load_dataset(config), config.min_rating, config.min_user_positives)


def check_k_eval(k_eval: int, num_items: int) -> None:
    """A K that reaches the whole catalog makes every target a hit: Recall@K would be 1."""
    if k_eval >= num_items:
        raise TwoTowerError(
            f"k_eval ({k_eval}) must be below the number of items ({num_items}), "
            "or every target counts as a hit"
        )


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
    check_device(config.device)
    target = config.resolved_artifacts_dir
    with distributed.session(config.device) as context:
        claim = files.staged_folder(target, "artifacts", reads=input_files(config))
        with claim if context.is_main else contextlib.nullcontext() as folder:
            split = prepare(config)
            check_k_eval(config.k_eval, split.num_items)
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
    # the native index before any file: a crash inside it leaves an empty staging folder,
    # which the next run writing this target removes
    options = plugins.component_options(config, "hnsw")
    index = plugins.retrievers().get("hnsw").build(vectors, **options)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "num_users": split.num_users,
            "num_items": split.num_items,
            "num_genres": len(split.genre_names),
        },
        folder / files.MODEL,
    )
    files.write_json(folder / files.CONFIG, config.to_dict())
    files.save_array(folder / files.ITEM_EMBEDDINGS, vectors)
    index.save(folder)
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
    extra = {"config": config.to_dict(), "data_sha256": split.fingerprint()}
    files.write_manifest(folder, "artifacts", extra)


def load_model(folder: Path, config: TwoTowerConfig) -> TwoTowerModel:
    checkpoint = torch.load(folder / files.MODEL, map_location="cpu", weights_only=True)
    genres = np.zeros((checkpoint["num_items"] + 1, checkpoint["num_genres"]), dtype=np.float32)
    encoder_class = plugins.user_encoders().get(config.user_encoder)
    model = TwoTowerModel(
        config, checkpoint["num_users"], checkpoint["num_items"], genres, encoder_class
    )
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


class Recommender:
    """A trained model loaded from its artifacts folder, ready to recommend."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.manifest = files.read_manifest(self.folder)
        source = self.folder / files.CONFIG
        self.config = TwoTowerConfig.from_dict(files.read_json(self.folder, files.CONFIG), source)
        self.model = load_model(self.folder, self.config)
        mappings = files.read_json(self.folder, files.MAPPINGS)
        self.user_ids: list[str] = mappings["users"]
        self.item_ids: list[str] = mappings["items"]
        self.user_index = {user: i + 1 for i, user in enumerate(self.user_ids)}
        self.item_index = {item: i + 1 for i, item in enumerate(self.item_ids)}
        self.items = files.read_json(self.folder, files.ITEMS)["items"]
        self.histories: dict[str, list[str]] = files.read_json(self.folder, files.USER_HISTORIES)
        self.item_vectors = files.load_array(self.folder, files.ITEM_EMBEDDINGS)
        self._retrievers: dict[str, Any] = {}

    def retriever(self, name: str):
        """The named retriever over the item vectors: its saved index, else built in memory."""
        if name not in self._retrievers:
            cls = plugins.retrievers().get(name)
            try:
                index = cls.load(self.folder)
            except FileNotFoundError:
                if name == "hnsw":
                    log.warning("HNSW index missing in %s; using exact search", self.folder)
                    return self.retriever("exact")
                options = plugins.component_options(self.config, name)
                index = cls.build(self.item_vectors, **options)
            self._retrievers[name] = index
        return self._retrievers[name]

    def test_queries(self) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """Every user's test query (PROTOCOL.md): user indexes, histories without the last
        item (item indexes), and that last item as a catalog row."""
        users, histories, targets = [], [], []
        for user_id, items in self.histories.items():
            indexes = np.array([self.item_index[i] for i in items], dtype=np.int64)
            users.append(self.user_index[user_id])
            histories.append(indexes[:-1])
            targets.append(indexes[-1] - 1)
        return np.array(users, dtype=np.int64), histories, np.array(targets, dtype=np.int64)

    @torch.no_grad()
    def user_vector(self, user_id: str) -> np.ndarray:
        user = self.user_index.get(str(user_id))
        if user is None:
            raise unknown_user(str(user_id), self.user_ids)
        history = np.array([self.item_index[i] for i in self.histories[str(user_id)]])
        ids, mask = pad_left([history], self.config.max_history_len)
        vector = self.model.encode_users(
            torch.tensor([user]), torch.as_tensor(ids), torch.as_tensor(mask)
        )
        return vector.numpy()

    def recommend(
        self, user_id: str, k: int = 10, exclude_seen: bool = True, retriever: str | None = None
    ) -> list[Recommendation]:
        """Top-``k`` items for a known user, best first."""
        k = check_k(k, len(self.item_ids))
        query = require_finite(self.user_vector(user_id))
        seen = [self.item_index[i] - 1 for i in self.histories[str(user_id)]]
        index = self.retriever(retriever or self.config.retriever)
        ids, scores = index.search(query, k, exclude=[seen] if exclude_seen else None)
        return ranked(ids[0], scores[0], self.item_ids, self.items)


def load(artifacts_dir: str | Path) -> Recommender:
    """Load a trained model from its artifacts folder (checksums verified)."""
    return Recommender(Path(artifacts_dir))


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
    split = prepare(config)
    if split.fingerprint() != recommender.manifest["data_sha256"]:
        raise TwoTowerError(
            f"the data ({describe_data(config)}) is not the data {recommender.folder} was "
            f"fitted on (fingerprint {split.fingerprint()[:12]}, fitted on "
            f"{recommender.manifest['data_sha256'][:12]}); point evaluate at that data"
        )
    metrics = {
        "model": evaluate_model(recommender.model, split, "test", config),
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
