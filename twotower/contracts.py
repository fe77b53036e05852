"""What twotower calls on each kind of component: one ``typing.Protocol`` per kind.

The hooks of ``hookspecs.py`` register components of these kinds;
``docs/plugins.md`` shows these very classes (a test keeps the two equal);
``twotower.testing`` checks a component against its Protocol before it
checks its behaviour. A Protocol lists what every component of its kind has.
What only some have is a capability (``CAPABILITIES``): generic code asks
for it with ``capability(component, name)`` instead of testing a
component's name.

Importing this module imports no torch: the serving runtime types against it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .errors import TwoTowerError

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor, nn

    from .config import TwoTowerConfig
    from .data.dataset import Dataset
    from .losses import TrainBatch
    from .towers.model import TwoTowerModel


@runtime_checkable
class UserEncoder(Protocol):
    """The user tower's sequence model, an ``nn.Module``.

    ``config`` is the run's ``TwoTowerConfig``; ``item_embedding`` is the module
    shared with the item tower that maps item indexes ``[...]`` to
    ``[..., embedding_dim]`` (the item's ID embedding plus its content; index 0
    is the padding item and maps to zeros): call it and read its
    ``embedding_dim``, nothing else, since exports replace it by an equal
    lookup table. ``num_users`` counts the known users (user index 0 is the
    unknown user). It must export to ONNX with a dynamic batch and history
    length: no Python control flow on tensor values.
    """

    def __init__(self, config: TwoTowerConfig, item_embedding: nn.Module, num_users: int): ...

    def forward(self, user_ids: Tensor, history: Tensor, history_mask: Tensor) -> Tensor:
        """``user_ids[B]`` int64, ``history[B, L]`` int64, ``history_mask[B, L]`` bool ->
        ``[B, d]``, L2-normalised when ``config.normalize``. Histories are left-padded
        (the most recent item last); a row of padding only (a cold user) stays finite.
        The core refuses vectors of another shape or dtype than the item tower's."""


@runtime_checkable
class Loss(Protocol):
    """A training objective."""

    def __call__(
        self, user_vecs: Tensor, item_vecs: Tensor, temperature: Tensor, batch: TrainBatch
    ) -> Tensor:
        """Row ``i`` of ``user_vecs[B, d]`` and ``item_vecs[B, d]`` is a user and its positive
        item -> a float scalar tensor with gradients (the core refuses anything else).
        ``batch`` is a ``twotower.losses.TrainBatch``: ``target_items``,
        ``user_ids``, ``history``, ``history_mask``, ``num_items``,
        ``encode_items(ids)`` to encode any other items with gradients, and
        ``seen(candidates)``, which candidates row ``i``'s user had before its target
        (a loss honouring ``config.loss_mask_seen`` leaves them out of the negatives)."""


@runtime_checkable
class LossFactory(Protocol):
    """What ``register_losses`` registers: it makes the run's loss."""

    def __call__(self, config: TwoTowerConfig, item_counts: Tensor) -> Loss:
        """``item_counts[N + 1]`` (float) is how often each item index is a training target
        (index 0 is padding): the sampling rate of in-batch negatives."""


@runtime_checkable
class Retriever(Protocol):
    """A top-K search backend over item vectors, registered as a class. No torch: the
    serving runtime searches without it."""

    @classmethod
    def build(cls, item_vectors: np.ndarray, **params: Any) -> Retriever:
        """An index over ``item_vectors[N, d]`` float32; ``params`` are its options
        (the config's ``<name>_*`` settings without the prefix)."""

    @classmethod
    def load(cls, directory: Path) -> Retriever:
        """The index ``save`` wrote; ``FileNotFoundError`` when its files are absent
        (twotower then builds one)."""

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[Collection[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids[Q, k] int64, scores[Q, k] float32)``: rows of ``item_vectors``, best first,
        scores their inner products; never an excluded row (one collection per query); a
        query gets ``k`` items while ``k`` are left, then id -1 with score -inf. The core
        refuses an answer of another shape or type, or with ids outside the catalog, and
        probes the rest on a few queries when it opens the retriever."""

    def save(self, directory: Path) -> list[Path]:
        """Write the index into ``directory`` under file names of its own; return them.
        Fit and export refuse a save that changes a file already there."""


@runtime_checkable
class Towers(Protocol):
    """Both towers of a bundle, loaded by a format: numpy in, numpy out. The core
    refuses vectors of another shape or dtype, naming the format."""

    def encode_users(
        self, user_ids: np.ndarray, history: np.ndarray, history_mask: np.ndarray
    ) -> np.ndarray:
        """As ``UserEncoder.forward``: float32 ``[B, d]``; a history longer than the
        graph takes keeps its most recent items."""

    def encode_items(self, item_ids: np.ndarray) -> np.ndarray:
        """Item indexes ``[N]`` (1..num_items) -> float32 ``[N, d]``."""

    def graphs(self) -> dict[str, Any]:
        """Each graph's inputs and outputs, recorded in the manifest and compared on
        every load (``{}`` when there is nothing to compare)."""


@runtime_checkable
class Format(Protocol):
    """An export format and its runtime, registered as a class built with no arguments."""

    def export(self, model: TwoTowerModel, out_dir: Path) -> list[Path]:
        """Write both towers of a trained model into ``out_dir``; return the files (at
        least one, all inside ``out_dir``, none named as the bundle's own files).
        ``twotower.export.towers.towers(model)`` gives the two graphs with positional
        inputs. ``twotower export`` then checks parity before anything is kept."""

    def load(self, bundle_dir: Path, threads: int = 1) -> Towers:
        """The towers ``export`` wrote, computing on ``threads`` threads."""


@dataclass(frozen=True)
class Calibration:
    """Inputs like those the towers will serve, for schemes that fix activation ranges
    ahead (static quantization): ``user_batches`` as ``Towers.encode_users`` takes them,
    ``item_batches`` as ``Towers.encode_items`` takes them."""

    user_batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    item_batches: list[np.ndarray]


@runtime_checkable
class Quantizer(Protocol):
    """What a format that lists ``quantizations`` has besides (``twotower export --quantize``)."""

    def quantize(self, folder: Path, scheme: str, calibration: Calibration) -> None:
        """Quantize the files ``export`` wrote into ``folder``, in place; a scheme that
        needs no calibration ignores ``calibration``. Parity is then recorded, not
        enforced: quantized towers are expected to differ a little."""


@runtime_checkable
class DatasetLoader(Protocol):
    """A data source. twotower applies the implicit filter and the temporal split."""

    def __call__(self, config: TwoTowerConfig) -> Dataset:
        """``interactions``: ``user``, ``item`` (str), ``timestamp`` (int64 or float64; only
        its order is used), optional ``rating`` (float); ``items`` (optional): ``item``,
        ``title`` (str), ``genres`` (list of str). The core casts other ids, numeric
        timestamps and ratings as a file's, and refuses the rest in one line naming the
        dataset, row and column; a loader's own exception is one line too."""


# the hook that registers each kind: what it registers first, then what goes with it
CONTRACTS: dict[str, tuple[type, ...]] = {
    "register_user_encoders": (UserEncoder,),
    "register_losses": (LossFactory, Loss),
    "register_retrievers": (Retriever,),
    "register_formats": (Format, Towers, Quantizer),
    "register_datasets": (DatasetLoader,),
}


@dataclass(frozen=True)
class Capability:
    """Something only some components have, and what generic code assumes without it."""

    name: str
    kinds: tuple[str, ...] | None  # the registry kinds that may have it; None: every kind
    default: Any
    meaning: str


CAPABILITIES = {
    c.name: c
    for c in (
        Capability(
            "option_schema",
            None,
            None,
            "a dataclass of its `<name>_*` options, typed, with allowed values from "
            "`twotower.schema`; every command checks `--set` keys against it",
        ),
        Capability(
            "check_config",
            None,
            None,
            "`check_config(config)` raises `TwoTowerError` on settings it cannot use; "
            "called before any data is read",
        ),
        Capability(
            "encode_sequence",
            ("user_encoders",),
            None,
            "`encode_sequence(user_ids, history, history_mask) -> Tensor[B, L, d]`, the "
            "vector after every prefix: with `causal` it trains in sequence mode",
        ),
        Capability(
            "causal",
            ("user_encoders",),
            True,
            "whether position t sees only items up to t (needed by sequence training)",
        ),
        Capability(
            "prebuilt",
            ("retrievers",),
            False,
            "`True`: `fit` and `export` build its index and save it with the folder "
            "(building is slow, loading is not); otherwise it is built on first use",
        ),
        Capability(
            "quantizations",
            ("formats",),
            (),
            "the schemes its `quantize(folder, scheme, calibration)` (`Quantizer`) applies "
            "in place to the files `export` wrote (`twotower export --quantize`)",
        ),
        Capability(
            "opset",
            ("formats",),
            None,
            "the ONNX opset of the graphs it writes, recorded in `manifest.json`",
        ),
        Capability(
            "settings",
            ("datasets",),
            (),
            "the config fields only it reads (`interactions`): given without "
            "`--dataset` they select it, given with another dataset they are an error",
        ),
    )
}


def capability(component: Any, name: str) -> Any:
    """What ``component`` offers for capability ``name``, or the capability's default."""
    return getattr(component, name, CAPABILITIES[name].default)


def cannot_train_in_sequence(
    encoder: str, why: str = "needs a causal encode_sequence"
) -> TwoTowerError:
    """The refusal of ``--train-mode sequence`` for an encoder without the capability."""
    return TwoTowerError(
        f"user encoder {encoder!r} cannot train in sequence mode ({why}); use --train-mode prefix"
    )


def scheme_names(schemes: Any) -> bool:
    """Whether ``schemes`` is what a format's ``quantizations`` must be: names, in a list."""
    return isinstance(schemes, list | tuple) and all(isinstance(s, str) and s for s in schemes)


def members(protocol: type) -> list[str]:
    """The methods a component of ``protocol`` must have, in the order they are written."""
    return [
        name
        for name, value in vars(protocol).items()
        if (name == "__call__" or not name.startswith("_"))
        and (callable(value) or isinstance(value, classmethod))
    ]


def missing(component: Any, protocol: type) -> list[str]:
    """The methods of ``protocol`` that ``component`` lacks (none: it keeps the contract)."""
    return [name for name in members(protocol) if not callable(getattr(component, name, None))]
