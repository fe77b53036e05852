"""The extension contract: one hook per extension point.

Every hook receives a ``register(name, component)`` callable and calls it once
per component the plugin provides. Built-in components register through these
same hooks (see ``twotower/builtins/``). A name registered twice is an error
that names both plugins.

Keep the imports of a plugin module light: import heavy libraries (torch)
inside the hook body, so that the torch-free serving runtime can look up
retrievers and formats without importing them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("twotower")
hookimpl = pluggy.HookimplMarker("twotower")

Register = Callable[[str, Any], None]


@hookspec
def register_user_encoders(register: Register) -> None:
    """Register user encoders (the user tower's sequence model).

    ``register(name, cls)`` where ``cls(config, item_embedding, num_users)``
    builds an ``nn.Module``: ``config`` is the run's ``TwoTowerConfig``,
    ``item_embedding`` the ``nn.Embedding`` shared with the item tower (row 0
    is padding), ``num_users`` the number of known users (user index 0 means
    "unknown user"). Its ``forward(user_ids[B] int64, history[B, L] int64,
    history_mask[B, L] bool) -> Tensor[B, d]`` returns L2-normalised vectors.
    Histories are left-padded; a row may be all padding (a cold user) and must
    still give a finite vector. The module must export to ONNX with dynamic
    batch and history length.
    """


@hookspec
def register_losses(register: Register) -> None:
    """Register training objectives.

    ``register(name, factory)`` where ``factory(config, item_counts)`` returns
    a callable ``loss(user_vecs[B, d], item_vecs[B, d], temperature, batch) ->
    scalar Tensor``. ``item_counts`` is a float tensor of training-set
    frequencies indexed by item index (index 0 is padding). ``batch`` is a
    ``twotower.losses.TrainBatch``: its ``target_items`` are the rows of
    ``item_vecs`` and ``encode_items(ids)`` encodes any other items (sampled
    negatives, the whole catalog). In data-parallel training rows are this
    rank's; in-batch candidates are ``batch.columns(item_vecs)``, every rank's
    (see ``TrainBatch``). The loss is the mean over the rows.
    """


@hookspec
def register_retrievers(register: Register) -> None:
    """Register top-K search backends.

    ``register(name, cls)`` where ``cls.build(item_vectors[N, d] float32,
    **params)`` returns an index; ``index.search(queries[Q, d], k,
    exclude=None) -> (ids[Q, k] int64, scores[Q, k] float32)`` where ``ids``
    are row numbers of ``item_vectors``, best first, and ``exclude`` is one
    collection of row numbers per query that must not be returned; rows that
    cannot be filled hold id -1. ``index.save(dir)`` writes its files and
    ``cls.load(dir)`` reads them back. ``params`` come from the config fields
    and ``extra`` keys that start with ``<name>_`` (``hnsw_ef`` -> ``ef``).
    Retrievers must not import torch: the serving runtime uses them.
    """


@hookspec
def register_formats(register: Register) -> None:
    """Register export formats and their runtimes.

    ``register(name, cls)`` where ``cls().export(model, out_dir) -> list[Path]``
    writes the user and item towers of a trained ``TwoTowerModel`` into
    ``out_dir``, and ``cls().load(bundle_dir)`` returns towers with
    ``encode_users(user_ids, history, history_mask)`` and
    ``encode_items(item_ids)`` taking and returning numpy arrays.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register data sources.

    ``register(name, load)`` where ``load(config) -> twotower.data.Dataset``:
    an interactions table (``user``, ``item`` as strings, ``timestamp`` int64
    or float64 (only its order is used), optional ``rating`` float) and
    optional item metadata (``item``, ``title``, ``genres`` as a list of
    strings). ``load`` may carry ``settings``, the config fields only it
    reads (``interactions``), and ``option_schema`` (see ``validation.py``).
    """
