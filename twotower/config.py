"""TwoTowerConfig: every hyper-parameter and path of a run, in one dataclass.

It is the single source of truth for defaults: the CLI builds its flags from
these fields, `--config FILE.toml` uses the same keys, and the resolved config
is saved with the artifacts as JSON so a run can be reproduced or re-loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TwoTowerError
from .schema import check

# where a machine finds its files and how many threads it runs: these may differ between
# the machines of one distributed run (the data read is compared by its content)
MAX_THREADS = 1024  # far more threads than cores exhaust the process (libgomp aborts it)
MACHINE_SETTINGS = ("data_dir", "artifacts_dir", "interactions", "items", "download", "num_threads")

# the spellings of each column a data file is searched for, first found first, when
# no --*-col flag names it
COLUMN_ALIASES = {
    "user": ("user", "user_id", "userId", "userid", "UserID"),
    "item": ("item", "item_id", "itemId", "itemid", "movieId", "movie_id", "MovieID"),
    "timestamp": ("timestamp", "time", "ts", "Timestamp"),
    "rating": ("rating", "Rating", "score"),
    "title": ("title", "movie_title", "name", "Title"),
    "genres": ("genres", "genre", "class", "Genres"),
}


def spellings(role: str) -> str:
    """``COLUMN_ALIASES[role]`` for ``--help``: "user, user_id, ... or UserID"."""
    *most, last = COLUMN_ALIASES[role]
    return f"{', '.join(most)} or {last}"


def opt(default: Any, help: str) -> Any:
    """A config field with its ``--help`` text; the CLI builds its flags from these."""
    return field(default=default, metadata={"help": help})


@dataclass
class TwoTowerConfig:
    """Every setting of a run. Field names are the TOML keys; flags are ``--field-name``."""

    # --- data ---------------------------------------------------------------
    dataset: str = opt("movielens-100k", "dataset plugin to read")
    data_dir: str = opt("./data", "folder for downloaded data and the default artifacts")
    artifacts_dir: str | None = opt(
        None, "artifacts folder, written by fit, read by the others (default: <data-dir>/artifacts)"
    )
    download: bool = opt(True, "fetch MovieLens-100K when it is not in --data-dir")
    interactions: str | None = opt(None, "interactions file (CSV or Parquet) for dataset 'files'")
    items: str | None = opt(None, "item metadata file: item id, title, genres separated by |")
    user_col: str | None = opt(None, f"user column (default: {spellings('user')})")
    item_col: str | None = opt(None, f"item column (default: {spellings('item')})")
    time_col: str | None = opt(None, f"timestamp column (default: {spellings('timestamp')})")
    rating_col: str | None = opt(
        None,
        f"rating column (default: {spellings('rating')} if there is one; none: ignore "
        "any, every interaction is positive)",
    )
    title_col: str | None = opt(
        None, f"title column of the items file (default: {spellings('title')})"
    )
    genres_col: str | None = opt(
        None, f"genres column of the items file (default: {spellings('genres')})"
    )
    min_rating: float = opt(4.0, "implicit positives are ratings >= this")
    min_user_positives: int = opt(3, "users with fewer positives are dropped (at least 3)")
    max_history_len: int = opt(50, "most recent history items the user tower reads")

    # --- model --------------------------------------------------------------
    user_encoder: str = opt("transformer", "user encoder plugin")
    embedding_dim: int = opt(64, "width of both towers")
    num_layers: int = opt(2, "Transformer blocks / GRU layers")
    num_heads: int = opt(2, "attention heads")
    dropout: float = opt(0.3, "dropout in both towers (inputs, attention, hidden layers, user ID)")
    pooling: str = opt("last", "Transformer pooling: last (item's output) or mean (of history)")
    causal: bool = opt(True, "Transformer attends to earlier items only (allows sequence training)")
    use_user_id: bool = opt(True, "join a learned user-ID embedding to the history summary")
    use_item_features: bool = opt(True, "add genre embeddings to each item's ID embedding")
    item_mlp: bool = opt(False, "item tower: a 2-layer MLP over ID + genres (else their sum)")
    user_mlp: bool = opt(False, "user tower: a 2-layer MLP over [history ; user ID] (else sum)")
    init_std: float = opt(0.02, "embedding tables start from N(0, init_std²)")
    normalize: bool = opt(False, "L2-normalise both towers' vectors (score = cosine / τ)")
    temperature: float = opt(1.0, "initial softmax temperature")
    learn_temperature: bool = opt(False, "learn the temperature")
    min_temperature: float = opt(0.01, "lower clamp of the learned temperature")
    max_temperature: float = opt(1.0, "upper clamp of the learned temperature")

    # --- training -----------------------------------------------------------
    loss: str = opt("full-softmax", "loss plugin")
    train_mode: str = opt(
        "auto", "prefix (one example per target), sequence (causal windows) or auto"
    )
    mask_accidental_hits: bool = opt(
        False, "an item that is two rows' positive is neither's negative"
    )
    loss_mask_seen: bool = opt(
        True, "a user's earlier items are not their negatives (evaluation masks them too)"
    )
    num_negatives: int = opt(256, "uniform negatives per batch of the mixed-negatives loss")
    batch_size: int = opt(256, "examples per batch in prefix training")
    sequence_batch_size: int = opt(16, "windows per batch in sequence training (~26 examples each)")
    lr: float = opt(1e-3, "AdamW learning rate")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    lr_schedule: str = opt(
        "constant", "learning rate over training: constant, or cosine (from --lr to 0 at --epochs)"
    )
    ema_decay: float = opt(
        0.999, "validate and keep a moving average of the weights, per step (0 = off)"
    )
    epochs: int = opt(100, "most epochs to train")
    patience: int = opt(15, "stop after this many epochs without a better valid Recall@K")
    seed: int = opt(0, "random seed (same seed and threads give the same metrics on CPU)")
    device: str = opt("cpu", "torch device: cpu, cuda, cuda:1, mps")
    num_threads: int | None = opt(None, "torch CPU threads (default: torch's choice)")

    # --- evaluation and retrieval ------------------------------------------
    k_eval: int = opt(10, "headline K of Recall/MRR/NDCG (10, 20 and 50 are reported too)")
    mask_seen: bool = opt(True, "remove each user's earlier positives from the ranking")
    retriever: str = opt("exact", "retriever plugin recommend and serve search with")
    hnsw_m: int = opt(16, "HNSW graph degree M")
    hnsw_ef_construction: int = opt(200, "HNSW candidate list size while building")
    hnsw_ef: int = opt(100, "HNSW candidate list size while searching")

    extra: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "options for plugins, as KEY=VALUE"}
    )

    @property
    def resolved_artifacts_dir(self) -> Path:
        if self.artifacts_dir is not None:  # "" names the current folder
            return Path(self.artifacts_dir)
        return Path(self.data_dir) / "artifacts"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def fingerprint(self, leave_out: Sequence[str] = ()) -> str:
        """sha256 of every setting but ``leave_out``: runs with one fingerprint were asked
        for the same thing. ``device`` counts by its kind (``cuda`` is ``cuda:0``)."""
        values = {k: v for k, v in self.to_dict().items() if k not in leave_out}
        values["device"] = self.device.split(":")[0]
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str | None = "config") -> TwoTowerConfig:
        """Settings from ``source`` (a TOML file, a saved config.json), type-checked; an
        error names the source, unless it is ``None``."""
        return cls(**check(cls, values, where=f"{source}: " if source else ""))

    @classmethod
    def from_toml(cls, path: str | Path) -> TwoTowerConfig:
        return cls.from_dict(read_toml(path), source=str(path))

    def replace(self, **changes: Any) -> TwoTowerConfig:
        return dataclasses.replace(self, **changes)


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; keys may use dashes or underscores."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TwoTowerError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TwoTowerError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise TwoTowerError(f"{path}: cannot read ({exc.strerror})") from None
    settings = underscored(values, path)
    if isinstance(settings.get("extra"), dict):  # plugin options, spelled as --set takes them
        settings["extra"] = underscored(settings["extra"], path)
    return settings


def underscored(values: dict[str, Any], path: Path) -> dict[str, Any]:
    """``values`` with dashes in keys read as underscores, as flags are."""
    settings: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name in settings:  # num-layers and num_layers: one would be dropped unseen
            raise TwoTowerError(f"{path}: {name} is given twice (as {key!r} and spelled otherwise)")
        settings[name] = value
    return settings
