"""Contract checks for plugin authors: call them from your own tests.

    from twotower.testing import check_retriever

    def test_faiss_keeps_the_retriever_contract():
        check_retriever("faiss", index="hnsw")

Each check builds a tiny fixture (the ``synthetic`` dataset with a handful of
users and items, short histories, one or two epochs), uses the component the
way twotower does (training through ``twotower.train.train``, export through
a format plugin, search as the serving runtime calls it) and fails with an
``AssertionError`` that names the component and the rule it broke. Each takes
a few seconds. The built-ins pass them all (``tests/test_testing_kit.py``), so
a third-party component is held to exactly the same contract.

A check takes a registered name or the component itself, so a plugin can be
checked before it is installed: an encoder or loss that is not registered yet
is registered under a temporary name for the duration (training looks its
components up by name); a retriever or format is used as it is.
"""

from __future__ import annotations

import contextlib
import math
import re
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import contracts, plugins
from .artifacts import FITTED_FILES
from .config import TwoTowerConfig
from .data.padding import pad_left
from .data.split import Split, make_split
from .errors import TwoTowerError
from .export.bundle import check_written
from .hookspecs import hookimpl
from .losses import TrainBatch
from .metrics import overlap_at_k
from .recommendation import CheckedTowers, save_index
from .towers.model import TwoTowerModel
from .towers.runtime import ModelTowers

MAX_ABS_DIFF = 1e-5  # exported towers against PyTorch, as `twotower export` demands
MIN_RECALL = 0.9  # an approximate retriever's Recall@10 against exact search

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # user_ids[B], history[B, L], mask[B, L]


# --- fixtures ----------------------------------------------------------------------


def tiny_config(**changes: Any) -> TwoTowerConfig:
    """A config that trains on the tiny synthetic fixture in about a second."""
    values: dict[str, Any] = {
        "dataset": "synthetic",
        "extra": {"synthetic_num_users": 40, "synthetic_num_items": 30, "synthetic_length": 8},
        "max_history_len": 6,
        "embedding_dim": 16,
        "num_layers": 1,
        "num_heads": 2,
        "batch_size": 32,
        "epochs": 2,
        "num_negatives": 16,
        # a few steps must show the loss falling: faster and less noisy than the defaults
        "lr": 1e-2,
        "dropout": 0.1,
    }
    values.update(changes)
    return TwoTowerConfig(**values)


@cache
def tiny_split() -> Split:
    """40 synthetic users over 30 items, split as PROTOCOL.md says (made once per process)."""
    config = tiny_config()
    dataset = plugins.datasets().get(config.dataset)(config)
    return make_split(dataset, config.min_rating, config.min_user_positives)


def history_batches(split: Split, max_len: int) -> list[Batch]:
    """Batches of different sizes and widths, each with a cold row (no history).

    The widths differ from the export's example inputs, so exported graphs
    are also checked on dynamic batch and history length.
    """
    full = split.train(1)
    rows = [
        [(0, full[:0]), (1, full), (2, split.train(2)[:1]), (3, split.train(3)[:3]), (4, full[:0])],
        [(0, full[:0]), (5, split.train(5)[-1:])],
        [(6, split.train(6)[:2]), (7, split.train(7)[:3]), (0, full[:0])],
    ]
    batches = []
    for batch in rows:
        users = np.array([user for user, _ in batch], dtype=np.int64)
        ids, mask = pad_left([history for _, history in batch], max_len)
        batches.append((users, ids, mask))
    return batches


@contextlib.contextmanager
def registered(kind: str, component: Any) -> Iterator[str]:
    """The registry name of ``component`` (a name, or the registered object itself).

    An object that is not registered is added for the duration by a
    throw-away plugin, through the same hook a package would use.
    """
    registry = plugins.registry(kind)
    if isinstance(component, str):
        registry.get(component)  # an unknown name fails here, listing the known ones
        yield component
        return
    for name in registry.names():
        if registry.get(name) is component:
            yield name
            return
    spelled = re.sub(r"[^A-Za-z0-9_-]", "_", getattr(component, "__name__", "component"))
    name = f"checked-{spelled}"  # a name the registry takes (a lambda is "<lambda>")
    hook_name = plugins.KINDS[kind][0]
    plugin = types.SimpleNamespace(
        **{hook_name: hookimpl(lambda register: register(name, component))}
    )
    plugins.add_plugin(plugin, f"twotower.testing:{name}")
    try:
        yield name
    finally:
        plugins.remove_plugin(f"twotower.testing:{name}")


def built_in(kind: str) -> list[str]:
    """The names twotower's own plugins register: what every component must work with."""
    registry = plugins.registry(kind)
    ours = plugins.DEFAULT_PLUGINS
    return [name for name in registry.names() if registry.plugin_of(name) in ours]


@contextlib.contextmanager
def asserted(what: str) -> Iterator[None]:
    """A component's failure inside the block, as an ``AssertionError`` naming ``what``."""
    try:
        yield
    except AssertionError:
        raise
    except TwoTowerError as problem:  # twotower's own checks name the component already
        raise AssertionError(str(problem)) from None
    except Exception as exc:
        raise AssertionError(f"{what}: {type(exc).__name__}: {exc}") from exc


@cache
def tiny_model(user_encoder: str = "transformer") -> TwoTowerModel:
    """A model trained one epoch on the tiny fixture, for the format checks."""
    from .train import train

    config = tiny_config(user_encoder=user_encoder, epochs=1)
    return train(config, tiny_split()).model


# --- comparisons -----------------------------------------------------------------


def conforms(what: str, component: Any, protocol: type) -> None:
    """``component`` has every method of ``protocol`` (``twotower.contracts``)."""
    lacking = contracts.missing(component, protocol)
    assert not lacking, (
        f"{what}: lacks {', '.join(lacking)} of contracts.{protocol.__name__} "
        f"({', '.join(contracts.members(protocol))})"
    )


def assert_vectors(what: str, vectors: Any, rows: int, dim: int) -> None:
    assert isinstance(vectors, np.ndarray), f"{what}: returned {type(vectors).__name__}"
    assert vectors.shape == (rows, dim), f"{what}: shape {vectors.shape}, expected {(rows, dim)}"
    assert vectors.dtype == np.float32, f"{what}: dtype {vectors.dtype}, expected float32"
    assert np.isfinite(vectors).all(), f"{what}: non-finite values"


def assert_close(what: str, expected: np.ndarray, actual: np.ndarray) -> None:
    worst = float(np.abs(expected - actual).max())
    assert worst <= MAX_ABS_DIFF, f"{what}: max abs diff {worst:.2e} > {MAX_ABS_DIFF:.0e}"


def assert_towers_match(what: str, model: TwoTowerModel, towers: Any, items: bool) -> None:
    """Exported ``towers`` give the PyTorch model's user (and item) vectors."""
    dim = int(model.catalog_vectors().shape[1])
    reference = ModelTowers(model)
    for number, batch in enumerate(history_batches(tiny_split(), model.max_history_len), 1):
        shape = f"batch {number} ({batch[1].shape[0]} rows, width {batch[1].shape[1]})"
        exported = towers.encode_users(*batch)
        assert_vectors(f"{what}: user tower, {shape}", exported, len(batch[0]), dim)
        assert_close(f"{what}: user tower, {shape}", reference.encode_users(*batch), exported)
    if items:
        for ids in (np.arange(1, model.num_items + 1), np.array([3, 1])):
            exported = towers.encode_items(ids)
            assert_vectors(f"{what}: item tower, {len(ids)} items", exported, len(ids), dim)
            expected = reference.encode_items(ids)
            assert_close(f"{what}: item tower, {len(ids)} items", expected, exported)


# --- user encoders -----------------------------------------------------------------


def check_user_encoder(encoder: str | type, **config_changes: Any) -> None:
    """A user encoder trains, gives finite [B, d] vectors (unit length when the config
    normalises), ignores left padding, keeps a cold user finite, encodes every prefix at
    once as it encodes each (with the ``encode_sequence`` capability), and exports in
    each built-in format with parity (dynamic batch and history length).
    """
    from .train import train

    with registered("user_encoders", encoder) as name:
        config = tiny_config(user_encoder=name, **config_changes)
        what = f"user encoder {name!r}"
        with asserted(what):  # training's own checks (vector shapes, dtypes) name it
            result = train(config, tiny_split())
        losses = [entry["loss"] for entry in result.log]
        assert all(math.isfinite(loss) for loss in losses), f"{what}: training loss {losses}"
        if len(losses) > 1:
            assert losses[-1] < losses[0], f"{what}: training loss did not decrease: {losses}"
        model = result.model.eval()
        conforms(what, model.user_tower, contracts.UserEncoder)
        check_every_parameter_learns(what, config)
        check_user_vectors(what, model, config)
        check_sequence(what, model, config)
        for format_name in built_in("formats"):  # a format plugin has check_format
            exporter = plugins.formats().get(format_name)()
            exported = f"{what} exported to {format_name}"
            with tempfile.TemporaryDirectory() as folder:
                with asserted(exported):
                    exporter.export(model, Path(folder))
                    towers = exporter.load(Path(folder))
                assert_towers_match(exported, model, towers, False)


def first_step_loss(training, seed: int) -> torch.Tensor:
    """The loss of the first batch epoch 1 trains on (on a group, this rank's share),
    back-propagated: the gradients of one step, before the optimizer moves anything."""
    generator = torch.Generator().manual_seed(seed)
    batches = training.batches(training.data, training.batch_size, generator, training.context)
    loss = training.step(*next(iter(batches)))
    loss.backward()
    return loss


def check_every_parameter_learns(what: str, config: TwoTowerConfig) -> None:
    """One training step gives every trainable parameter a gradient: training under
    torchrun (DistributedDataParallel) waits for every one in every step."""
    from .train import parameters_without_gradient, start_training

    training = start_training(config, tiny_split())
    first_step_loss(training, config.seed)
    unused = parameters_without_gradient(training.trained)
    assert not unused, f"{what}: no gradient reaches {unused} in a training step"


def check_user_vectors(what: str, model: TwoTowerModel, config: TwoTowerConfig) -> None:
    dim, towers = config.embedding_dim, ModelTowers(model)
    for batch in history_batches(tiny_split(), config.max_history_len):
        vectors = towers.encode_users(*batch)
        cold = ~batch[2].any(axis=1)
        assert np.isfinite(vectors[cold]).all(), f"{what}: a cold user gets a non-finite vector"
        assert_vectors(what, vectors, len(batch[0]), dim)
        if config.normalize:  # unit length; zero only for a cold user the encoder knows nothing of
            norms = np.linalg.norm(vectors, axis=1)
            unit = np.isclose(norms, 1.0, atol=1e-4) | (cold & (norms == 0))
            assert unit.all(), f"{what}: vectors not unit length: {norms}"
        # the serving runtime pads each batch to its longest history: padding must not matter
        for row in range(len(batch[0])):
            alone = pad_left([batch[1][row][batch[2][row]]], config.max_history_len)
            single = towers.encode_users(batch[0][row : row + 1], *alone)
            assert_close(f"{what}: a history encoded alone vs left-padded", single, vectors[row])


def check_sequence(what: str, model: TwoTowerModel, config: TwoTowerConfig) -> None:
    """With the ``encode_sequence`` capability (causal), the vector at each valid position
    is ``forward`` on the history up to it: sequence training is honest only then."""
    encoder = model.user_tower
    if contracts.capability(encoder, "encode_sequence") is None:
        return
    if not contracts.capability(encoder, "causal"):
        return
    towers = ModelTowers(model)
    for users, ids, mask in history_batches(tiny_split(), config.max_history_len):
        with torch.no_grad():
            sequence = encoder.encode_sequence(*(torch.as_tensor(a) for a in (users, ids, mask)))
        for t in range(ids.shape[1]):
            rows = np.flatnonzero(mask[:, t])  # the rows with an item at position t
            if not len(rows):
                continue
            prefix = towers.encode_users(users[rows], ids[rows, : t + 1], mask[rows, : t + 1])
            assert_close(
                f"{what}: encode_sequence at position {t} vs forward on the prefix up to it",
                prefix,
                sequence[rows, t].numpy(),
            )


# --- losses --------------------------------------------------------------------------


def check_loss(loss: str | Callable, **config_changes: Any) -> None:
    """A loss gives a finite scalar with gradients (accidental hits included), is lower
    when each user vector matches its target item than when they are shuffled, and in a
    training step gives every parameter a gradient, its own (an ``nn.Module`` loss) too.
    """
    from .train import check_loss_value

    factory = plugins.losses().get(loss) if isinstance(loss, str) else loss
    what = f"loss {loss if isinstance(loss, str) else getattr(loss, '__name__', loss)!r}"
    num_items, dim, size = 50, 16, 8
    with torch.random.fork_rng():
        torch.manual_seed(0)
        counts = torch.arange(num_items + 1, 0, -1, dtype=torch.float32)  # popular low ids
        counts[0] = 0.0  # the padding item
        conforms(what, factory, contracts.LossFactory)
        loss_fn = factory(tiny_config(**config_changes), counts)
        conforms(f"{what}: what its factory returns", loss_fn, contracts.Loss)
        table = torch.randn(num_items + 1, dim, requires_grad=True)

        def encode_items(ids: torch.Tensor) -> torch.Tensor:
            return F.normalize(table[ids], dim=-1)

        history = torch.randint(1, num_items + 1, (size, 4))
        earlier = torch.zeros(size, num_items, dtype=torch.bool)
        earlier[torch.arange(size).unsqueeze(1), history - 1] = True  # the history came before
        temperature = torch.tensor(0.1, requires_grad=True)

        def run(user_vecs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            batch = TrainBatch(
                torch.arange(1, size + 1),
                history,
                history != 0,
                targets,
                encode_items,
                num_items,
                lambda: earlier,
            )
            return loss_fn(user_vecs, encode_items(targets), temperature, batch)

        targets = torch.randperm(num_items)[:size] + 1
        with_hit = targets.clone()
        with_hit[1] = with_hit[0]  # one item is the positive of two rows
        users = torch.randn(size, dim, requires_grad=True)
        value = run(F.normalize(users, dim=-1), with_hit)
        with asserted(what):
            check_loss_value(value, what)  # what training refuses
        assert torch.isfinite(value), f"{what}: {value.item()} on a random batch"
        value.backward()
        for part, grad in (("user vectors", users.grad), ("item vectors", table.grad)):
            assert grad is not None, f"{what}: no gradient reaches the {part}"
            assert torch.isfinite(grad).all(), f"{what}: non-finite gradient of the {part}"
            assert grad.abs().sum() > 0, f"{what}: zero gradient of the {part}"

        with torch.no_grad():
            aligned = encode_items(targets)
            matched = run(aligned, targets).item()
            shuffled = run(aligned.roll(1, dims=0), targets).item()
        assert matched < shuffled, (
            f"{what}: {matched:.4f} for users aligned with their targets, "
            f"not lower than {shuffled:.4f} for shuffled ones"
        )
        with registered("losses", loss) as name, asserted(what):
            check_every_parameter_learns(what, tiny_config(loss=name, **config_changes))


# --- retrievers ----------------------------------------------------------------------


def unit_vectors(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def check_retriever(retriever: str | type, **params: Any) -> None:
    """A retriever returns ``k`` ids best first with their inner products, finds at
    least 90% of exact search's top 10, never returns an excluded item, returns all
    ``k`` while ``k`` items are left and id -1 with score -inf past them, saves beside
    twotower's files without changing them, survives save/load unchanged, and raises
    FileNotFoundError when its files are absent. ``params`` go to ``build``.
    """
    from .retrievers.exact import ExactRetriever

    cls = plugins.retrievers().get(retriever) if isinstance(retriever, str) else retriever
    name = retriever if isinstance(retriever, str) else cls.__name__
    what = f"retriever {name!r}"
    conforms(what, cls, contracts.Retriever)
    rng = np.random.default_rng(0)
    items, queries, k = unit_vectors(rng, 500, 16), unit_vectors(rng, 20, 16), 10
    index = cls.build(items, **params)
    conforms(f"{what}: what build() returns", index, contracts.Retriever)
    exact = ExactRetriever.build(items)

    sizes = [0, 400, 1, *rng.integers(0, 200, len(queries) - 3)]  # none, most, one, some
    exclude = [set(rng.choice(len(items), size=size, replace=False).tolist()) for size in sizes]
    for excluded in (None, exclude, [np.fromiter(e, dtype=np.int64) for e in exclude]):
        ids, scores = searched(what, index, queries, k, excluded)
        assert_search_result(what, ids, scores, items, queries, k)
        for row, banned in enumerate(excluded or []):
            returned = set(ids[row].tolist()) & set(np.asarray(list(banned)).tolist())
            assert not returned, f"{what}: returned excluded items {sorted(returned)}"
        expected, _ = exact.search(queries, k, exclude=excluded)
        found = overlap_at_k(ids, expected)
        assert found >= MIN_RECALL, f"{what}: recall@{k} {found:.2f} against exact search"

    # exactly k items left: all k come back, best first; fewer: the tail is -1
    for left in (k, k - 3):
        keep = rng.choice(len(items), size=left, replace=False)
        excluded = [set(range(len(items))) - set(keep.tolist())] * 2
        ids, scores = searched(what, index, queries[:2], k, excluded)
        expected, _ = exact.search(queries[:2], k, exclude=excluded)
        assert (ids == expected).all(), (
            f"{what}: with {left} items not excluded, returned {ids.tolist()}, "
            f"expected {expected.tolist()} (-1 past the last item)"
        )
        assert (np.isneginf(scores) == (ids == -1)).all(), (
            f"{what}: scores {scores.tolist()}: an id -1 scores -inf, and only an id -1"
        )
    beyond = len(items) + 5
    ids, scores = searched(what, index, queries[:2], beyond, None)
    assert ids.shape == scores.shape == (2, beyond), (
        f"{what}: k = {beyond}, past the catalog of {len(items)}, gave shape {ids.shape}; "
        f"expected {(2, beyond)}, -1 filled"
    )
    past = (ids[:, len(items) :] == -1).all() and np.isneginf(scores[:, len(items) :]).all()
    assert past, f"{what}: k beyond the catalog is not filled with id -1, score -inf"
    assert (np.sort(ids[:, : len(items)], axis=1) == np.arange(len(items))).all(), (
        f"{what}: k = catalog size does not return every item once"
    )

    check_save_load(what, name, cls, index, queries, exclude)
    if isinstance(retriever, str):
        check_torch_free(what, cls.__module__)


def searched(what, index, queries, k, exclude) -> tuple[np.ndarray, np.ndarray]:
    """``index.search``, whose answer must be the pair ``(ids, scores)``."""
    answer = index.search(queries, k, exclude=exclude)
    assert isinstance(answer, tuple | list) and len(answer) == 2, (
        f"{what}: search() must return (ids, scores), got {type(answer).__name__} {answer!r:.80}"
    )
    return answer[0], answer[1]


def assert_search_result(what, ids, scores, items, queries, k) -> None:
    assert isinstance(ids, np.ndarray) and ids.dtype == np.int64, f"{what}: ids must be int64"
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float32, (
        f"{what}: scores must be float32"
    )
    assert ids.shape == scores.shape == (len(queries), k), (
        f"{what}: shapes {ids.shape} and {scores.shape}, expected {(len(queries), k)}"
    )
    assert ((ids >= 0) & (ids < len(items))).all(), f"{what}: ids out of range: {ids.tolist()}"
    for row in ids:
        assert len(set(row.tolist())) == k, f"{what}: an item comes back twice: {row.tolist()}"
    inner = np.einsum("qd,qkd->qk", queries, items[ids])
    assert np.allclose(scores, inner, atol=1e-4), f"{what}: scores are not the inner products"
    assert (np.diff(scores, axis=1) <= 1e-6).all(), f"{what}: results are not best first"


def check_save_load(what, name, cls, index, queries, exclude) -> None:
    """Save into a folder holding twotower's own files, as ``fit`` does: they stay as they
    were, the index's files are its own, and what loads answers as the index did."""
    with tempfile.TemporaryDirectory() as folder:
        for own in FITTED_FILES:  # an index saved beside them must leave them as they are
            (Path(folder) / own).write_text("{}")
        with asserted(what):
            written = save_index(name, index, Path(folder))
        assert written, f"{what}: save() must return the files it wrote, got {written}"
        loaded = cls.load(Path(folder))
        for excluded in (None, exclude):
            before, after = (
                searched(what, index, queries, 10, excluded),
                searched(f"{what} after save/load", loaded, queries, 10, excluded),
            )
            assert (before[0] == after[0]).all() and np.allclose(before[1], after[1]), (
                f"{what}: results differ after save/load"
            )
    with tempfile.TemporaryDirectory() as empty:
        try:
            cls.load(Path(empty))
        except FileNotFoundError:
            pass  # twotower then builds the index in memory
        except Exception as exc:
            raise AssertionError(
                f"{what}: load() of a folder without its files must raise FileNotFoundError, "
                f"not {type(exc).__name__}: {exc}"
            ) from None
        else:
            raise AssertionError(f"{what}: load() of a folder without its files must raise")


def check_torch_free(what: str, module: str) -> None:
    """The serving runtime runs without PyTorch: importing the retriever must not need it."""
    code = f"import importlib, sys; importlib.import_module({module!r}); print(sorted(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"{what}: importing {module} failed\n{done.stderr}"
    assert "'torch'" not in done.stdout, f"{what}: importing {module} imports torch"


# --- formats -----------------------------------------------------------------------


def check_format(format: str | type, user_encoder: str = "transformer") -> None:
    """A format exports a trained model, loads it back, and the loaded towers give
    PyTorch's user and item vectors within 1e-5 (cold user included) as numpy arrays.
    Each quantization it offers applies in place and still gives finite vectors.
    """
    cls = plugins.formats().get(format) if isinstance(format, str) else format
    name = format if isinstance(format, str) else cls.__name__
    what = f"format {name!r}"
    exporter = cls()
    conforms(what, exporter, contracts.Format)
    schemes = contracts.capability(exporter, "quantizations")
    assert contracts.scheme_names(schemes), (
        f"{what}: quantizations must be a list of scheme names, not {schemes!r}"
    )
    assert not schemes or not contracts.missing(exporter, contracts.Quantizer), (
        f"{what}: offers quantizations {list(schemes)} but has no "
        "quantize(folder, scheme, calibration)"
    )
    model = tiny_model(user_encoder)
    with tempfile.TemporaryDirectory() as folder:
        with asserted(what):
            written = exporter.export(model, Path(folder))
            towers = cls().load(Path(folder))
        conforms(f"{what}: what load() returns", towers, contracts.Towers)
        with asserted(what):  # what `twotower export` refuses: files it lists, graphs it records
            check_written(name, written, Path(folder))
            CheckedTowers(name, towers, model.vector_dim).graphs()
        assert_towers_match(what, model, towers, items=True)
    dim = int(model.catalog_vectors().shape[1])
    batches = history_batches(tiny_split(), model.max_history_len)
    items = np.arange(1, model.num_items + 1)
    calibration = contracts.Calibration(user_batches=batches, item_batches=[items])
    for scheme in schemes:
        with tempfile.TemporaryDirectory() as folder:
            with asserted(f"{what}, quantized {scheme}"):
                exporter.export(model, Path(folder))
                exporter.quantize(Path(folder), scheme, calibration)
                towers = cls().load(Path(folder))
            for batch in batches:
                vectors = towers.encode_users(*batch)
                assert_vectors(f"{what}, quantized {scheme}", vectors, len(batch[0]), dim)


__all__ = ["check_format", "check_loss", "check_retriever", "check_user_encoder", "tiny_config"]
